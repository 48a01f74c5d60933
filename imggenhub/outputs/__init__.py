"""What a run brings home: the output folder (claimed, locked, verified) and its manifest
(``artifacts``), the gallery, contact sheets, sweep grids, CLIP scores and ``show``."""

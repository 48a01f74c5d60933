"""A run: its record, store and locks (``runs``), its lifecycle table (``lifecycle``), the one
driver that advances it (``driver``), what it produces (``kinds``), its shards (``shards``),
and the library calls the commands make (``jobs``)."""

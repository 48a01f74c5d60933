"""The job: what the user asks for (the schema and its validation, the model presets) and the
notebook it is rendered into."""

"""Hugging Face Jobs: a second remote, GPUs rented by the minute (``--backend hf-jobs``)."""

"""The Kaggle backend (``backend``): push, follow and download kernels through the official
client; its credentials, API client and retry policy (``credentials``, ``api``), kernel
metadata (``meta``), inputs and the Hub token as private datasets (``inputs``), verified
downloads (``download``), live logs (``logs``) and the GPU-hour estimate (``estimate``)."""

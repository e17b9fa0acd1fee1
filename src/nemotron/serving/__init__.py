"""Serving the model once for the whole suite: what each engine runs (`engines`), the server as a NeMo-Run job here
or on Slurm (`jobs`, `cluster`, `endpoints`), replicas judged by what they do (`replicas`), a server that died
launched again for what its death cost (`relaunch`), the in-flight gate every request passes (`gate`), the serving
venv and built-in model (`runtime`, `provision`), and the evaluation as a detached Slurm job (`detached`)."""

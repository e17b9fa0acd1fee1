import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("NEMO_EVALUATOR_TELEMETRY_LEVEL", "0")

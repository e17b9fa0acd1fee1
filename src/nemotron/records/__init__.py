"""What a run leaves behind: result files and the manifest (`results`), this machine's index of runs (`runs`),
tested comparisons between evaluations (`compare`, `stats`), the W&B export with lineage (`wandb_export`), and the
Prefect events of new model artifacts (`artifact_events`)."""

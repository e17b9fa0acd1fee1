"""The benchmarks: the task registry (`registry`), each benchmark planned with its harness config and result key
and run by nemo-evaluator in a subprocess that cannot outlive the flow (`runner`, `harness`, `reaper`), and its
size and progress in requests (`sizing`, `progress`)."""

"""lm-evaluation-harness as the engine: task index, worker process, scores and request accounting."""

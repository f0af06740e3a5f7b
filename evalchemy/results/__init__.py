"""What a run leaves behind: the summary (and later the run folder's layout)."""

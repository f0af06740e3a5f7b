"""Reports people look at: self-contained HTML (inline CSS and SVG, no network) and Markdown pages for a run,
a comparison of two runs and the leaderboard, rendered with Jinja2 from plain data."""

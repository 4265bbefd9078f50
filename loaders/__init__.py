"""salesflow's extract-and-load side: dlt sources, the pipeline runner and the CLI."""

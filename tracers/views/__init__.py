"""Teaching views: what the lab's structures look like (layout), what one hit executes (step), and
pages and exports built from them (report)."""

"""DataBright."""

"""The Gradio web UI: one module per tab, plain handler functions, and the named API."""

"""The embeddings endpoint on Ray Serve: ``protocol`` (the OpenAI API, pure), ``model`` (one loaded
encoder and its token counts), ``source`` (a folder or the registry's champion), ``follow`` (the
alias poller), ``deployment`` (the Serve deployment), ``app`` (the application from the config)."""

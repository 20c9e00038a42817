"""The web console: live cameras, the event history, the rule editor and the JSON API they use."""

"""What the services must agree on, defined once: tables, job kinds, task names, events."""

"""One blueprint per resource: logins, credentials, health."""

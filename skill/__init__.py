"""Everything needed to sign in: the OAuth client, the login program, credential files.

``skill`` never imports ``service``; it talks to the service over HTTP.
"""

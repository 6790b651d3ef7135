"""Everything needed to keep the secret: the operator API, secrets store, restore and sync.

Built on :mod:`skill`; arrives with the service issue.
"""

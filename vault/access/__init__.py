"""Who is calling (authentication, bearer tokens) and what they may do (caller policy, the
caller's scope for the call in progress).
"""

"""The gRPC edge: one servicer per proto service, message conversion, the interceptor, the
status table, the RPC table.
"""

"""Schemathesis hooks for the api_description tests.

A long-poll (`GET /chat/history?after=...&wait=N`) may rightly hold a request
for up to 60 s. The fuzzer may ask for any wait, so it is capped at 1 s here:
the answer's shape is the same, and the run stays inside CI's time.
"""

import schemathesis


@schemathesis.hook
def map_query(ctx, query):
    if query and isinstance(query.get("wait"), int) and query["wait"] > 1:
        query["wait"] = 1
    return query

"""Schemathesis hooks for the api_description tests.

A long-poll (`GET /chat/history?after=...&wait=N`) may rightly hold a request
for up to 60 s. The fuzzer may ask for any wait, in any phase, so each call's
wait is capped at 1 s just before it is sent: the answer's shape is the same,
and the run stays inside CI's time.
"""

import schemathesis


@schemathesis.hook
def before_call(ctx, case, kwargs):
    query = case.query
    if not query or "wait" not in query:
        return
    try:
        wait = int(query["wait"])
    except (TypeError, ValueError):
        return
    if wait > 1:
        query["wait"] = 1

"""What tests share to start servers, read their metrics and wait for them.

- `server_process`: `python -m mnist_serving_server` as a child process (ready file, output);
- `metrics`: in-process registries (`sample_sum`, `app_metric`) and scraped /metrics
  (`scrape`, `scrape_families`, `total`);
- `waiting`: bounded polls (`wait_until` for coroutines, `wait_for` for threads);
- `processes`: a server's worker processes, their sockets, memory and exit, from /proc;
- `channels`: gRPC channels that each open a connection of their own.

None of these modules but `channels` imports gRPC: tests/interop load tritonclient, whose
protobuf messages would clash with ours.
"""

"""Shared fakes, builders and kits for the tests (tests/ is on the pytest path: ``from support.<module> import ...``).

- fake_vast_http: the Vast API faked at the HTTP level (scripted MockTransport server, recorded bodies, RecordingClock).
- fake_vast_client: our VastClient faked in memory, for the provider (FakeVastClient, make_provider).
- emulator_wire: raw HTTP calls to a running emulator (search, rent, read an instance, faults, clock).
- ray_launch_tags: the tags Ray's launchers give a head and a worker.
- ray_v2_driver: the provider driven as Ray's autoscaler v2 drives it (MiniAutoscaler, ray_up).
- emulator_chaos: outbids, host failures, failing requests and ledger sampling against a running emulator.
- placement_offers, placement_oracle: offers by Vast's offer rule, and a brute-force placement oracle.
- ssh_runner_fakes: endpoints and a recording process runner for VastSSHCommandRunner.
- netns_host: the e2e host side (tools, free subnet, prefixes, leftovers, SSH into an instance).
- emulated_ray_cluster: the netns emulator as a child process and the ``ray`` CLI against it (e2e, bench_e2e).
- outbid_training: Ray Train on bid workers with a moto S3 bucket, outbid mid-run (e2e, bench_train_outbid).

A module here is imported by several test files; what one test file needs stays in that file.
"""

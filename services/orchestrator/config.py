"""orchestrator settings (flags and ANYANOMALY_ORCHESTRATOR_* environment variables)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.common.clients import ADDRESS_FORMS
from services.common.config import CallerSettings, load_settings, secret, setting

ENV_PREFIX = "ANYANOMALY_ORCHESTRATOR"
DEFAULT_PORT = 50050


@dataclass
class OrchestratorSettings(CallerSettings):
    port: int = setting(DEFAULT_PORT, "port to bind; 0 picks a free port (the bound port is logged)")
    clip_address: str = setting("127.0.0.1:50051", f"clip_service address: {ADDRESS_FORMS}")
    context_address: str = setting("127.0.0.1:50052", f"context_service address: {ADDRESS_FORMS}")
    lvlm_address: str = setting("127.0.0.1:50053", f"lvlm_service address: {ADDRESS_FORMS}")
    rpc_timeout_seconds: float = setting(300.0, "deadline of each call to clip, context and lvlm services")
    max_detections: int = setting(16, "Detect and DetectStream calls served at once; one more is refused at once "
                                  "with RESOURCE_EXHAUSTED (jobs and monitors have their own limits)", minimum=1)
    max_segments_in_flight: int = setting(2, "segments processed concurrently per detection (results stay in order)")
    frame_format: str = setting("jpeg", "how decoded video frames travel to the services (frame folders are "
                                "sent as their original files)", choices=("jpeg", "png"))
    jpeg_quality: int = setting(95, "JPEG quality for --frame-format jpeg")
    http_port: int = setting(0, "serve the web console and its JSON/SSE gateway on this port (same host; 0: off)")
    media_roots: str = setting("", "comma-separated folders that file and folder sources must lie under; empty: any "
                               "path when bound to loopback, else only the data dir")
    allow_hosts: str = setting("", "comma-separated hosts stream URIs may name (names, *.domain, IPs, CIDR ranges); "
                                "empty: any host but loopback, link-local and metadata addresses (allowed too when "
                                "bound to loopback)")
    max_texts: int = setting(64, "most texts per detection, after splitting 'a-b' texts")
    max_frames: int = setting(1_000_000, "most frames read from one source")
    max_image_pixels: int = setting(3840 * 2160, "largest frame accepted, in pixels")
    auth_tokens_file: str = setting("", "require a credential on every call but health and reflection: a file of "
                                    "'sha256:HASH SCOPES [NAME]' lines (anyanomaly token new) and, with "
                                    "--tls-client-ca, 'cert:IDENTITY SCOPES [NAME]' lines; re-read when it "
                                    "changes; empty: none asked")
    max_monitors_per_token: int = setting(32, "monitors one caller (token, certificate, or all callers when no "
                                          "credentials are asked) may have; one more is RESOURCE_EXHAUSTED",
                                          minimum=1)
    max_jobs_per_token: int = setting(64, "queued and running jobs one caller may have; one more is "
                                      "RESOURCE_EXHAUSTED", minimum=1)
    stream_timeout_seconds: float = setting(10.0, "a stream URI that does not connect, or sends no frame, within this "
                                            "long fails the detection")
    # Live operation: jobs, monitors and events (off without a data dir).
    data_dir: str = setting("", "folder for jobs, monitors, events and evidence (SQLite database and files); empty: "
                            "the Jobs, Monitors and Events services answer FAILED_PRECONDITION")
    database_url: str = secret("PostgreSQL URL (postgresql://user:password@host/db) to keep records in instead of "
                               "SQLite; one orchestrator runs its jobs and monitors, others stand by; evidence "
                               "files stay in --data-dir")
    holder_retry_seconds: float = setting(5.0, "a standby orchestrator tries this often to take over the jobs and "
                                          "monitors", minimum=0.05)
    max_running_jobs: int = setting(2, "jobs scored at once; later ones wait, queued", minimum=1)
    evidence_budget_mb: int = setting(1024, "evidence kept per monitor or job (oldest removed first), in MiB",
                                      minimum=1)
    evidence_days: float = setting(30.0, "evidence older than this many days is removed", minimum=0.001)
    event_days: float = setting(90.0, "events and dead letters older than this many days are removed", minimum=0.001)
    retention_sweep_seconds: float = setting(3600.0, "how often old evidence, events and dead letters are removed",
                                             minimum=0.1)
    event_poll_seconds: float = setting(1.0, "how often watchers look for records other replicas stored",
                                        minimum=0.05)
    reconnect_min_seconds: float = setting(1.0, "first wait before reconnecting a broken source (doubles, with "
                                           "jitter)", minimum=0.01)
    reconnect_max_seconds: float = setting(60.0, "longest wait between reconnects", minimum=0.01)
    max_lag_segments: int = setting(2, "live segments read but not yet scored before the oldest is dropped",
                                    minimum=1)
    webhook_attempts: int = setting(8, "deliveries tried per event and webhook before it goes to the dead letters",
                                    minimum=1)
    webhook_backoff_seconds: float = setting(1.0, "first wait between webhook attempts (doubles)", minimum=0.0)
    webhook_timeout_seconds: float = setting(10.0, "one webhook request's time limit", minimum=0.1)


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> OrchestratorSettings:
    return load_settings(
        OrchestratorSettings, argv, ENV_PREFIX,
        "orchestrator: scores a video for anomaly texts using clip, context and lvlm services.",
        env, prog="python -m services.orchestrator",
    )

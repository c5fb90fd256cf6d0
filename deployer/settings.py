"""Slipway's settings: read from the environment only (see .env.example).

Two modes from one code base. With neither DATABASE_URL nor REDIS_URL set, Slipway runs
embedded: SQLite in SLIPWAY_DATA_DIR, an in-process Celery worker on an in-memory broker and
an in-memory channel layer. With DATABASE_URL and REDIS_URL, it scales out over PostgreSQL,
a Redis broker and channels-redis, with any number of `celery -A deployer worker` processes.
"""

from __future__ import annotations

import os
import secrets
import sys
import warnings
from datetime import timedelta
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import unquote, urlsplit

import environ
from kombu import Queue

from deployer import env
from deployer.datadir import DataDirError, secure_data_dir
from deployer.env import ConfigurationError

BASE_DIR = Path(__file__).resolve().parent.parent

DATA_DIR = env.directory("SLIPWAY_DATA_DIR", BASE_DIR / "var")
DATABASE_URL = env.url("DATABASE_URL", ("postgres", "postgresql", "pgsql", "sqlite"))
REDIS_URL = env.url("REDIS_URL", ("redis", "rediss"))

# The data directory holds keys and the database: 0700, its secrets 0600, repaired here at
# every start (deployer/datadir.py).
try:
    secure_data_dir(DATA_DIR, (DATA_DIR / "slipway.sqlite3",))
except DataDirError as exc:
    raise ConfigurationError(str(exc)) from None

# The worker runs inside the web process whenever there is no broker to hand jobs to.
EMBEDDED_WORKER = not REDIS_URL
EMBEDDED = EMBEDDED_WORKER and not DATABASE_URL


def _secret_file(name: str, make: str) -> str:
    """Read a generated secret from the data directory, creating it (mode 0600) on first use."""
    path = DATA_DIR / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(make + "\n")
    return path.read_text().strip()


def _generated_fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


SECRET_KEY = env.string("SLIPWAY_SECRET_KEY")
if not SECRET_KEY:
    if not EMBEDDED:
        raise ConfigurationError(
            "SLIPWAY_SECRET_KEY must be set when DATABASE_URL or REDIS_URL is set"
        )
    SECRET_KEY = _secret_file("secret_key", secrets.token_urlsafe(50))

# Key list for secrets at rest: the first key encrypts, every key decrypts (rotation).
ENCRYPTION_KEYS = env.strings("SLIPWAY_ENCRYPTION_KEYS")
if not ENCRYPTION_KEYS:
    if not EMBEDDED and not (DATA_DIR / "encryption.key").exists():
        raise ConfigurationError(
            "SLIPWAY_ENCRYPTION_KEYS must be set when DATABASE_URL or REDIS_URL is set "
            "(generate one with: python manage.py generate_encryption_key)"
        )
    ENCRYPTION_KEYS = [_secret_file("encryption.key", _generated_fernet_key())]

DEBUG = env.boolean("SLIPWAY_DEBUG", False)
BIND = env.string("SLIPWAY_BIND", "127.0.0.1:8000")
BASE_URL = env.string("SLIPWAY_BASE_URL", f"http://{BIND}").rstrip("/")
ALLOWED_HOSTS = env.strings("SLIPWAY_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = [BASE_URL, *env.strings("SLIPWAY_CSRF_TRUSTED_ORIGINS")]
ALLOW_LOCAL_REPOSITORIES = env.boolean("SLIPWAY_ALLOW_LOCAL_REPOSITORIES", False)
ADMIN_PASSWORD = env.string("SLIPWAY_ADMIN_PASSWORD")

# Longest a deployment may run before Celery stops it; the broker's visibility timeout sits above.
DEPLOYMENT_TIME_LIMIT = env.integer("SLIPWAY_DEPLOYMENT_TIME_LIMIT", 3600, minimum=60)
# Longest one fetch of a project's repository may take (seconds), whatever the transport.
FETCH_TIMEOUT = env.integer("SLIPWAY_FETCH_TIMEOUT", 900, minimum=10)
# A running deployment whose heartbeat is older than this is failed by the reaper.
HEARTBEAT_TIMEOUT = env.integer("SLIPWAY_HEARTBEAT_TIMEOUT", 120, minimum=10)
# How often the reaper (celery beat, or the embedded loop) looks for stale deployments: a dead
# worker's deployment is failed between HEARTBEAT_TIMEOUT and HEARTBEAT_TIMEOUT + this.
REAPER_INTERVAL = env.integer("SLIPWAY_REAPER_INTERVAL", 30, minimum=5)
# How often celery beat (or the embedded loop, at most every REAPER_INTERVAL) looks for
# scheduled deployments whose slot came, in seconds.
SCHEDULE_TICK = env.integer("SLIPWAY_SCHEDULE_TICK", 15, minimum=5)
WORKER_CONCURRENCY = env.integer("SLIPWAY_WORKER_CONCURRENCY", 4, minimum=1)
# Seconds a server's SSH connection stays open after a deployment, for the next one to the
# same server with the same login and pinned key (0: closed after each deployment).
SSH_KEEP_SECONDS = env.integer("SLIPWAY_SSH_KEEP_SECONDS", 60, minimum=0)


def _process_role(argv: list[str]) -> str:
    """What this process is, from the command that started it: "web" (`manage.py serve`, or
    deployer.asgi under uvicorn, daphne, hypercorn or gunicorn; SLIPWAY_PROCESS_ROLE=web for
    another server), "worker" and "beat" (`celery -A deployer worker|beat`), else "manage"
    (migrate, shell, tests)."""
    program = argv[0] if argv else ""
    name = Path(program).name
    if name == "celery" or program.endswith("celery/__main__.py"):
        if "beat" in argv:
            return "beat"
        return "worker" if "worker" in argv else "manage"
    if argv[1:2] == ["serve"] or name in {"uvicorn", "daphne", "hypercorn", "gunicorn"}:
        return "web"
    return "manage"


# Decides the database connection handling below, and names this process's PostgreSQL
# connections (application_name "slipway-web", "slipway-worker"...: see pg_stat_activity).
PROCESS_ROLE = env.choice(
    "SLIPWAY_PROCESS_ROLE", _process_role(sys.argv), ("web", "worker", "beat", "manage")
)
# uvicorn processes `manage.py serve` starts (docs/benchmarks.md). The embedded worker lives in
# the web process, so without REDIS_URL there is exactly one.
WEB_WORKERS = env.integer("SLIPWAY_WEB_WORKERS", 1, minimum=1)
if WEB_WORKERS > 1 and EMBEDDED_WORKER:
    raise ConfigurationError(
        f"SLIPWAY_WEB_WORKERS={WEB_WORKERS}: the embedded worker (no REDIS_URL) runs inside "
        "the one web process; set REDIS_URL and run `celery -A deployer worker`, or use 1"
    )
# PostgreSQL connections one web process may hold at once (a psycopg pool; the embedded
# worker's threads get theirs on top). Requests beyond it wait up to DB_POOL_TIMEOUT seconds.
DB_POOL_SIZE = env.integer("SLIPWAY_DB_POOL_SIZE", 8, minimum=1)
DB_POOL_TIMEOUT = env.integer("SLIPWAY_DB_POOL_TIMEOUT", 20, minimum=1)
BUILD_DIR = env.directory("SLIPWAY_BUILD_DIR", DATA_DIR / "builds")
# Kept build outputs, for promotion (docs/promote.md): one content-addressed store per project.
# Scaled out, a folder every worker shares (NFS...): a promotion runs on any worker.
ARTEFACT_DIR = env.directory("SLIPWAY_ARTEFACT_DIR", DATA_DIR / "artefacts")

# The build sandbox (builds/engine/sandbox.py, docs/security.md). "off" is for single-team
# installs only: build commands then run as the worker's user, next to Slipway's own data.
BUILD_SANDBOX = env.boolean("SLIPWAY_BUILD_SANDBOX", True)
BUILD_USER = env.string("SLIPWAY_BUILD_USER", "slipway-build")
BUILD_READONLY_PATHS = tuple(env.strings("SLIPWAY_BUILD_READONLY_PATHS"))
for _path in BUILD_READONLY_PATHS:
    _resolved = Path(_path).resolve()
    if not Path(_path).is_absolute() or _resolved == Path("/"):
        raise ConfigurationError(
            f"SLIPWAY_BUILD_READONLY_PATHS: '{_path}' must be an absolute folder other than /"
        )
    if any(
        _resolved == private or _resolved in private.parents or private in _resolved.parents
        for private in (DATA_DIR.resolve(), BUILD_DIR.resolve(), ARTEFACT_DIR.resolve())
    ):
        raise ConfigurationError(
            f"SLIPWAY_BUILD_READONLY_PATHS: '{_path}' overlaps Slipway's data directory; "
            "builds must never see it"
        )
# Builds with the network on may reach private ranges (a package mirror on the office network);
# off by default, because the workers' database and broker often live there.
BUILD_PRIVATE_NETWORK = env.boolean("SLIPWAY_BUILD_PRIVATE_NETWORK", False)
BUILD_MAX_PROCESSES = env.integer("SLIPWAY_BUILD_MAX_PROCESSES", 1024, minimum=16)
BUILD_MAX_OPEN_FILES = env.integer("SLIPWAY_BUILD_MAX_OPEN_FILES", 4096, minimum=64)
# 0: no memory limit. Applied through a cgroup where the worker may create one.
BUILD_MEMORY_MB = env.integer("SLIPWAY_BUILD_MEMORY_MB", 4096, minimum=0)
# A separate build host (builds/engine/remote_build.py, docs/security.md): ssh://user@host:port/path,
# with the private key the workers log in with and the host key they pin.
BUILD_HOST = env.url("SLIPWAY_BUILD_HOST", ("ssh",))
BUILD_HOST_KEY_FILE = env.string("SLIPWAY_BUILD_HOST_KEY_FILE")
BUILD_HOST_FINGERPRINT = env.string("SLIPWAY_BUILD_HOST_FINGERPRINT")
if BUILD_HOST:
    _build_host = urlsplit(BUILD_HOST)
    if not (_build_host.hostname and _build_host.username and _build_host.path.startswith("/")):
        raise ConfigurationError(
            "SLIPWAY_BUILD_HOST must look like ssh://user@host[:port]/absolute/folder"
        )
    if not BUILD_HOST_KEY_FILE or not Path(BUILD_HOST_KEY_FILE).is_file():
        raise ConfigurationError(
            "SLIPWAY_BUILD_HOST_KEY_FILE must name the private key file the workers log in to "
            "the build host with"
        )
    if not BUILD_HOST_FINGERPRINT.startswith("SHA256:"):
        raise ConfigurationError(
            "SLIPWAY_BUILD_HOST_FINGERPRINT must be the build host's key fingerprint as "
            "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` prints it (SHA256:...)"
        )

INSTALLED_APPS = [
    # Django's admin site, behind Slipway's own sign-in (two-factor included).
    "deployer.apps.SlipwayAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    # Swagger UI from drf-spectacular-sidecar's copy, served by Slipway: no CDN to allow.
    "drf_spectacular_sidecar",
    "channels",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "deployer",
    "projects",
    "servers",
    "builds",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # django-csp (Django 5.2 has no CSP of its own): the policy is CONTENT_SECURITY_POLICY.
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "projects.middleware.TwoFactorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
    # NUL, lone surrogates, non-UTF-8 and over-long text in forms and queries: a 400 naming
    # the field before any view (deployer/textinput.py; the API's JSON has TextJSONParser).
    "deployer.textinput.OddTextMiddleware",
]

# Sign-in throttling and lockout (django-axes; docs/users.md). Axes' backend comes first so
# that a locked-out account or address is refused before its password is even checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.integer("SLIPWAY_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env.integer("SLIPWAY_LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
# Each on its own: too many failures for one user name lock that account from every
# address, and too many from one address lock that address for every account.
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# The address is the connection's own: uvicorn already replaces it with X-Forwarded-For only
# for a trusted proxy (--forwarded-allow-ips), so a client cannot choose its address.
AXES_IPWARE_META_PRECEDENCE_ORDER = ("REMOTE_ADDR",)
# Invitation links (projects/accounts.py) are valid this long, and work once.
PASSWORD_RESET_TIMEOUT = 3 * 24 * 3600
# The issuer shown in authenticator apps.
OTP_TOTP_ISSUER = "Slipway"

ROOT_URLCONF = "deployer.urls"
ASGI_APPLICATION = "deployer.asgi.application"
WSGI_APPLICATION = "deployer.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if DATABASE_URL:
    DATABASES = {"default": environ.Env.db_url_config(DATABASE_URL)}
    _database = DATABASES["default"]
    if _database["ENGINE"] == "django.db.backends.postgresql":
        _database.setdefault("OPTIONS", {})["application_name"] = f"slipway-{PROCESS_ROLE}"
    if _database["ENGINE"] == "django.db.backends.postgresql" and PROCESS_ROLE == "web":
        # Under ASGI every request runs in a thread of its own, and a persistent connection
        # stays with its thread: Django advises against them there. The web process borrows
        # from a bounded pool instead, returned at the end of each request.
        _database["CONN_MAX_AGE"] = 0
        _database["OPTIONS"]["pool"] = {
            # psycopg_pool refuses min_size > max_size: SLIPWAY_DB_POOL_SIZE=1 is allowed.
            "min_size": min(2, DB_POOL_SIZE + (WORKER_CONCURRENCY + 2 if EMBEDDED_WORKER else 0)),
            "max_size": DB_POOL_SIZE + (WORKER_CONCURRENCY + 2 if EMBEDDED_WORKER else 0),
            "timeout": DB_POOL_TIMEOUT,
        }
    else:
        # Celery workers and commands are not ASGI: one thread per connection, closed by
        # Celery's Django fixup when older than this, between tasks.
        _database.setdefault("CONN_MAX_AGE", 60)
    # A connection the server ended (a restart, pg_terminate_backend) is noticed before use
    # and replaced: the pool checks each one it lends (psycopg_pool's check_connection), a
    # persistent connection is checked at the start of each request or task.
    _database["CONN_HEALTH_CHECKS"] = True
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "slipway.sqlite3",
            "OPTIONS": {
                # The in-process worker and web requests write at once: WAL lets readers go on
                # while one writer works, IMMEDIATE takes the write lock up front so two writers
                # queue on the busy timeout instead of failing with "database is locked".
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
            # Tests use a file too: an in-memory database shares one cache between threads, and
            # its table locks fail at once ("table is locked") instead of waiting their turn.
            "TEST": {"NAME": DATA_DIR / "test.sqlite3"},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
# Serve straight from the finders: no collectstatic step is needed for `make run`.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = BASE_URL.startswith("https://")
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
X_FRAME_OPTIONS = "DENY"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "projects.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # A read-scoped API token changes nothing, whatever view it reaches.
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "projects.authentication.TokenScopePermission",
    ],
    "DEFAULT_PARSER_CLASSES": [
        "deployer.textinput.TextJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    # Our services' errors (InvalidInput, DeploymentRefused...) as JSON naming the field.
    "EXCEPTION_HANDLER": "deployer.api.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Slipway API",
    "DESCRIPTION": "Deploy Git revisions to your own servers over SSH.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and the API docs are for signed-in users (a session or an API token).
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # Write-only fields (secrets) appear in request bodies only, never in responses.
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "deployer.api.document_errors",
    ],
    "ENUM_NAME_OVERRIDES": {
        "DeploymentStatusEnum": "builds.models.Status",
        "TargetStatusEnum": "builds.models.TargetStatus",
        "KindEnum": "builds.models.Kind",
        "HealthCheckKindEnum": "servers.models.HealthCheckKind",
        "NotificationKindEnum": "projects.models.NotificationKind",
        "NotificationEventEnum": "projects.models.NotificationEvent",
    },
}

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": "slipway"},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Celery: settings live under CELERY_ in this module (see deployer/celery.py).
CELERY_BROKER_URL = REDIS_URL or "memory://localhost/"
CELERY_TASK_IGNORE_RESULT = True
# A message is acknowledged when its task starts (Celery's default), not when it ends. The
# work is rows in the database, never only a message: the outbox re-sends what no worker
# started (deployer.outbox), a deployment is claimed by a conditional update, and a worker that
# dies while running one is noticed by builds.tasks (worker lost) and the reaper. Late acks
# would add nothing to that and cost the worker its life: a worker holding an unacknowledged
# message when Redis restarts exits with "Unrecoverable error: AttributeError('NoneType'
# object has no attribute 'hostname')" (kombu restores unacknowledged messages while it
# closes the broken connection; Celery 5.7, kombu 5.7). docs/reliability-invariant.md.
CELERY_TASK_ACKS_LATE = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Workers outlive a broker restart or outage: they reconnect for as long as it takes (Celery's
# default gives up after 100 attempts, ~1 h, and exits), and a running deployment goes on
# (its state and log are in the database; nothing it does needs the broker).
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_TASK_SOFT_TIME_LIMIT = DEPLOYMENT_TIME_LIMIT
CELERY_TASK_TIME_LIMIT = int(DEPLOYMENT_TIME_LIMIT * 1.2)
# Redis redelivers an unacknowledged message after the visibility timeout: keep it above the
# longest deployment, or a slow deploy would be started a second time.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": int(DEPLOYMENT_TIME_LIMIT * 1.5),
    # A half-open connection (Redis gone without a FIN: a host or link down) is noticed in
    # seconds, not at the kernel's TCP timeout; a send never hangs on an unreachable broker.
    "socket_keepalive": True,
    "socket_connect_timeout": 5,
    "health_check_interval": 10,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Queues (docs/ARCHITECTURE.md): a long deployment never delays a notification, a preview,
# a webhook's processing or the reaper. A worker started without -Q consumes them all (the
# embedded mode's); docker-compose.yml gives deployments their own workers.
CELERY_TASK_QUEUES = tuple(
    Queue(name) for name in ("deployments", "previews", "webhooks", "notifications", "housekeeping")
)
CELERY_TASK_DEFAULT_QUEUE = "housekeeping"
CELERY_TASK_ROUTES = {
    "builds.tasks.run_deployment": {"queue": "deployments"},
    "builds.tasks.run_preview": {"queue": "previews"},
    "builds.tasks.process_webhooks": {"queue": "webhooks"},
    "builds.tasks.process_webhook_delivery": {"queue": "webhooks"},
    # A scheduled slot's run reads the repository's refs and creates a deployment, like a push.
    "builds.tasks.run_schedule": {"queue": "webhooks"},
    # A commit status's re-check of held deployments (docs/gates.md), like a push's processing.
    "builds.tasks.reevaluate_gates": {"queue": "webhooks"},
    # A drift check reads a whole release on a server (minutes for a large one): beside the
    # previews, never in front of the housekeeping queue's reaper and outbox relay.
    "builds.tasks.run_drift_check": {"queue": "previews"},
    "builds.tasks.send_notification_delivery": {"queue": "notifications"},
    "builds.tasks.resend_due_notification_deliveries": {"queue": "notifications"},
    "builds.tasks.*": {"queue": "housekeeping"},
}
CELERY_BEAT_SCHEDULE = {
    # Messages the broker could not take when their work was recorded (deployer.outbox).
    "relay-outbox": {"task": "builds.tasks.relay_outbox", "schedule": 5.0},
    "reap-stale-deployments": {
        "task": "builds.tasks.reap_stale_deployments",
        "schedule": float(REAPER_INTERVAL),
    },
    # Scheduled deployments whose slot came (docs/schedules.md): a slot starts within this
    # many seconds of its time; a claim in the database keeps it to one run.
    "tick-schedules": {"task": "builds.tasks.tick_schedules", "schedule": float(SCHEDULE_TICK)},
    # Deployments held by their gates (docs/gates.md): CI statuses asked of the Git hosts'
    # APIs, gates checked again, those waiting past their policy's wait refused.
    "tick-gates": {"task": "builds.tasks.tick_gates", "schedule": 60.0},
    # Scheduled drift checks whose time came (docs/drift.md): projects say how often, in
    # hours; one active check per server, whatever the number of beats.
    "tick-drift-checks": {"task": "builds.tasks.tick_drift_checks", "schedule": 300.0},
    # Notifications whose message was lost (a broker restart) or whose retry is due.
    "resend-due-notifications": {
        "task": "builds.tasks.resend_due_notification_deliveries",
        "schedule": 60.0,
    },
}

# WhiteNoise serves files with a synchronous iterator; under ASGI Django warns for each one.
warnings.filterwarnings(
    "ignore", message="StreamingHttpResponse must consume synchronous iterators"
)

LOG_LEVEL = env.string("SLIPWAY_LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
    raise ConfigurationError(
        f"SLIPWAY_LOG_LEVEL={LOG_LEVEL!r} must be DEBUG, INFO, WARNING or ERROR"
    )
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    # Django logs the path of a refused request: a webhook URL's token must not show.
    "filters": {"hide_webhook_tokens": {"()": "deployer.logfilters.HideWebhookTokens"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["hide_webhook_tokens"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"paramiko": {"level": "WARNING"}},
}

# --- Notifications (docs/notifications.md) ---------------------------------------------------
# Notification URLs may point at private addresses (a chat server on the office network) only
# when the administrator allows it; link-local and cloud metadata addresses stay refused anyway.
ALLOW_PRIVATE_NOTIFICATION_TARGETS = env.boolean(
    "SLIPWAY_ALLOW_PRIVATE_NOTIFICATION_TARGETS", False
)
# The same rule for the other far ends a user chooses (builds.outbound.policy, docs/network.md):
# repository URLs (an on-premise Git server needs it on), and servers' SSH hosts with their HTTP
# health checks (servers usually sit on private networks, hence on by default).
ALLOW_PRIVATE_REPOSITORIES = env.boolean("SLIPWAY_ALLOW_PRIVATE_REPOSITORIES", False)
ALLOW_PRIVATE_SERVERS = env.boolean("SLIPWAY_ALLOW_PRIVATE_SERVERS", True)
# Email notifications: smtp://user:password@host:port (no TLS), smtp+tls:// (STARTTLS) or
# smtps:// (TLS from the first byte); percent-encode special characters in the password.
# Unset: email notifications are refused when they are saved.
SMTP_URL = env.url("SLIPWAY_SMTP_URL", ("smtp", "smtp+tls", "smtps"))
EMAIL_FROM = env.string("SLIPWAY_EMAIL_FROM")
if EMAIL_FROM and "@" not in parseaddr(EMAIL_FROM)[1]:
    raise ConfigurationError(
        f"SLIPWAY_EMAIL_FROM={EMAIL_FROM!r} is not an address (deploys@example.com, or "
        "Slipway <deploys@example.com>)"
    )
_smtp = urlsplit(SMTP_URL)
try:
    EMAIL_PORT = _smtp.port or {"smtps": 465, "smtp+tls": 587}.get(_smtp.scheme, 25)
except ValueError:
    raise ConfigurationError("SLIPWAY_SMTP_URL has a port that is not a number") from None
EMAIL_HOST = _smtp.hostname or "localhost"
EMAIL_HOST_USER = unquote(_smtp.username or "")
EMAIL_HOST_PASSWORD = unquote(_smtp.password or "")
EMAIL_USE_TLS = _smtp.scheme == "smtp+tls"
EMAIL_USE_SSL = _smtp.scheme == "smtps"
# Django's default is no timeout at all: a silent mail server would hold a worker forever.
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = EMAIL_FROM or "slipway@localhost"

# --- Security headers (docs/security.md) ------------------------------------------------------
# django-csp (Django 5.2 has no CSP of its own). Every page's scripts and styles are static
# files of our own: no inline script, style attribute or <style> element anywhere.
_websocket_origin = (
    urlsplit(BASE_URL)
    ._replace(
        scheme="wss" if BASE_URL.startswith("https://") else "ws", path="", query="", fragment=""
    )
    .geturl()
)
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        # 'self' covers ws(s):// to the same host in current browsers; older ones need it named.
        "connect-src": ["'self'", _websocket_origin],
        "frame-ancestors": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "object-src": ["'none'"],
    }
}
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

# --- Operations: metrics and retention (docs/operations.md) ----------------------------------
# /metrics answers a Prometheus scrape carrying `Authorization: Bearer <this token>` (and a
# site admin's session); unset, it is 404 for everybody else.
METRICS_TOKEN = env.string("SLIPWAY_METRICS_TOKEN")
# DORA's change failure rate (builds.dora, docs/metrics.md): a deployment followed by a fix
# that went live within this many hours counts as a failed change; 0 turns that rule off.
METRICS_FIX_WINDOW_HOURS = env.integer("SLIPWAY_METRICS_FIX_WINDOW_HOURS", 24, minimum=0)
if METRICS_TOKEN and len(METRICS_TOKEN) < 16:
    raise ConfigurationError(
        "SLIPWAY_METRICS_TOKEN must be at least 16 characters (python -c 'import secrets; "
        "print(secrets.token_urlsafe(32))' makes one)"
    )
# The recent metrics (durations, webhook and notification deliveries) cover this many seconds.
METRICS_WINDOW = env.integer("SLIPWAY_METRICS_WINDOW", 3600, minimum=60)
# Days to keep each kind of record (builds/retention.py); 0 keeps it forever. Logs of finished
# deployments; webhook and finished notification deliveries; finished deployments (never one
# that a kept release was made by); the manifests of releases removed from their server.
RETAIN_LOG_DAYS = env.integer("SLIPWAY_RETAIN_LOG_DAYS", 90, minimum=0)
RETAIN_DELIVERIES_DAYS = env.integer("SLIPWAY_RETAIN_DELIVERIES_DAYS", 30, minimum=0)
RETAIN_DEPLOYMENTS_DAYS = env.integer("SLIPWAY_RETAIN_DEPLOYMENTS_DAYS", 365, minimum=0)
RETAIN_MANIFESTS_DAYS = env.integer("SLIPWAY_RETAIN_MANIFESTS_DAYS", 30, minimum=0)
CELERY_BEAT_SCHEDULE["prune-old-records"] = {
    "task": "builds.tasks.prune_old_records",
    "schedule": 3600.0,
}

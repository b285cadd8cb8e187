//! The Lambda Runtime API, one listener per function process
//! (`AWS_LAMBDA_RUNTIME_API`), and the pool of processes of one function:
//! an invocation goes to an idle process or starts a new one (up to the
//! function's concurrency); a process that overruns its timeout is killed,
//! as Lambda kills the sandbox; a process that exits mid-invocation fails it.

use super::stack::FunctionSpec;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Lambda's synchronous response limit (6 MB).
pub const MAX_SYNC_RESPONSE: usize = 6 * 1024 * 1024;

/// How an invocation ended when it did not return a result.
#[derive(Debug, Clone)]
pub enum InvokeError {
    /// The handler returned an error (`/error`) with its body.
    Function(Bytes),
    /// The process exited, failed init, or was killed.
    Runtime(String),
    /// The function overran its timeout.
    Timeout,
    /// The response exceeded 6 MB.
    ResponseTooLarge(usize),
}

pub type InvokeResult = Result<Bytes, InvokeError>;

struct Invocation {
    request_id: String,
    payload: Bytes,
    reply: oneshot::Sender<InvokeResult>,
}

struct InFlight {
    reply: oneshot::Sender<InvokeResult>,
}

struct Process {
    pid: u32,
    /// Set when the process has exited, so a `/next` it left open stops
    /// waiting (and stops holding the queue).
    exited: tokio::sync::watch::Receiver<bool>,
    /// The invocation it is handling, if any.
    in_flight: Option<(String, InFlight)>,
}

/// Every process of one function.
pub struct FunctionPool {
    pub spec: FunctionSpec,
    binary: PathBuf,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    queue_tx: mpsc::UnboundedSender<Invocation>,
    queue_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Invocation>>,
    idle: AtomicUsize,
    /// Invocations queued and not yet taken by a process.
    pending: AtomicUsize,
    live: AtomicUsize,
    max_concurrency: usize,
    processes: Mutex<HashMap<u64, Process>>,
    next_process: AtomicU64,
    pub started: AtomicUsize,
    pub invocations: AtomicUsize,
    pub killed_mid_invocation: AtomicUsize,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn request_id() -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "{:08x}-lane-{:012x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

impl FunctionPool {
    pub fn new(
        spec: FunctionSpec,
        binary: PathBuf,
        env: Vec<(String, String)>,
        log_dir: PathBuf,
        max_concurrency: usize,
    ) -> Arc<Self> {
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        Arc::new(Self {
            spec,
            binary,
            env,
            log_dir,
            queue_tx,
            queue_rx: tokio::sync::Mutex::new(queue_rx),
            idle: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            max_concurrency,
            processes: Mutex::new(HashMap::new()),
            next_process: AtomicU64::new(1),
            started: AtomicUsize::new(0),
            invocations: AtomicUsize::new(0),
            killed_mid_invocation: AtomicUsize::new(0),
        })
    }

    /// One synchronous invocation (what `RequestResponse` and the async
    /// queue's deliveries do).
    pub async fn invoke(self: &Arc<Self>, payload: Bytes) -> InvokeResult {
        let (reply, answer) = oneshot::channel();
        let inv = Invocation {
            request_id: request_id(),
            payload,
            reply,
        };
        self.invocations.fetch_add(1, Ordering::SeqCst);
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.queue_tx.send(inv).is_err() {
            return Err(InvokeError::Runtime("pool closed".into()));
        }
        self.scale();
        answer
            .await
            .unwrap_or_else(|_| Err(InvokeError::Runtime("invocation dropped".into())))
    }

    /// Starts a process when queued invocations outnumber idle processes.
    fn scale(self: &Arc<Self>) {
        if self.pending.load(Ordering::SeqCst) > self.idle.load(Ordering::SeqCst)
            && self.live.load(Ordering::SeqCst) < self.max_concurrency
        {
            self.spawn_process();
        }
    }

    /// SIGKILLs one process that is handling an invocation; returns whether
    /// there was one.
    pub fn kill_one_busy(&self) -> bool {
        let procs = self.processes.lock().unwrap();
        let Some(p) = procs.values().find(|p| p.in_flight.is_some()) else {
            return false;
        };
        kill(p.pid);
        true
    }

    fn spawn_process(self: &Arc<Self>) {
        let id = self.next_process.fetch_add(1, Ordering::SeqCst);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let api = listener.local_addr().unwrap().to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("{}.log", self.spec.binary)))
            .unwrap();
        let mut child = tokio::process::Command::new(&self.binary)
            .env_clear()
            .envs(self.env.iter().cloned())
            .env("AWS_LAMBDA_RUNTIME_API", &api)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        let pid = child.id().unwrap_or(0);
        let (exited_tx, exited) = tokio::sync::watch::channel(false);
        self.processes.lock().unwrap().insert(
            id,
            Process {
                pid,
                exited,
                in_flight: None,
            },
        );
        self.live.fetch_add(1, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::SeqCst);
        let pool = self.clone();
        let server = super::serve_http(listener, move |req| {
            let pool = pool.clone();
            async move { runtime_route(&pool, id, req).await }
        });
        let pool = self.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            server.abort();
            let _ = exited_tx.send(true);
            pool.live.fetch_sub(1, Ordering::SeqCst);
            let gone = pool.processes.lock().unwrap().remove(&id);
            if let Some((_, inflight)) = gone.and_then(|p| p.in_flight) {
                pool.killed_mid_invocation.fetch_add(1, Ordering::SeqCst);
                let _ = inflight.reply.send(Err(InvokeError::Runtime(format!(
                    "Runtime.ExitError: {status:?}"
                ))));
            }
            // Lambda starts a fresh sandbox for what is still queued.
            pool.scale();
        });
    }

    async fn next(self: &Arc<Self>, process: u64) -> Option<Invocation> {
        let mut exited = self.processes.lock().unwrap().get(&process)?.exited.clone();
        self.idle.fetch_add(1, Ordering::SeqCst);
        let inv = tokio::select! {
            inv = async { self.queue_rx.lock().await.recv().await } => inv,
            _ = exited.wait_for(|e| *e) => None,
        };
        self.idle.fetch_sub(1, Ordering::SeqCst);
        if inv.is_some() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
        inv.inspect(|inv| {
            let timeout = Duration::from_secs(self.spec.timeout_seconds);
            let pool = self.clone();
            let rid = inv.request_id.clone();
            // Lambda stops the sandbox at the deadline.
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                pool.time_out(process, &rid);
            });
        })
    }

    fn time_out(&self, process: u64, request: &str) {
        let mut procs = self.processes.lock().unwrap();
        if let Some(p) = procs.get_mut(&process)
            && p.in_flight.as_ref().is_some_and(|(r, _)| r == request)
        {
            let (_, inflight) = p.in_flight.take().unwrap();
            let _ = inflight.reply.send(Err(InvokeError::Timeout));
            kill(p.pid);
        }
    }

    fn finish(&self, process: u64, request: &str, result: InvokeResult) -> bool {
        let mut procs = self.processes.lock().unwrap();
        let Some(p) = procs.get_mut(&process) else {
            return false;
        };
        if p.in_flight.as_ref().is_none_or(|(r, _)| r != request) {
            return false;
        }
        let (_, inflight) = p.in_flight.take().unwrap();
        let _ = inflight.reply.send(result);
        true
    }
}

fn kill(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}

type Body = Full<Bytes>;

fn reply(status: StatusCode, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn runtime_route(
    pool: &Arc<FunctionPool>,
    id: u64,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let rest = path.strip_prefix("/2018-06-01/runtime/").unwrap_or("");
    if rest == "invocation/next" {
        return next_invocation(pool, id).await;
    }
    if rest == "init/error" {
        let gone = pool.processes.lock().unwrap().get(&id).map(|p| p.pid);
        if let Some(pid) = gone {
            kill(pid);
        }
        return reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#);
    }
    let Some((request, kind)) = rest
        .strip_prefix("invocation/")
        .and_then(|r| r.split_once('/'))
    else {
        return reply(StatusCode::NOT_FOUND, r#"{"errorMessage":"unknown path"}"#);
    };
    let body = match Limited::new(req.into_body(), MAX_SYNC_RESPONSE + 1)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let result = match kind {
        "response" if body.len() > MAX_SYNC_RESPONSE => {
            Err(InvokeError::ResponseTooLarge(body.len()))
        }
        "response" => Ok(body),
        "error" => Err(InvokeError::Function(body)),
        _ => return reply(StatusCode::NOT_FOUND, r#"{"errorMessage":"unknown path"}"#),
    };
    let too_large = matches!(result, Err(InvokeError::ResponseTooLarge(_)));
    if !pool.finish(id, request, result) {
        return reply(
            StatusCode::BAD_REQUEST,
            r#"{"errorMessage":"invalid request id"}"#,
        );
    }
    if too_large {
        return reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            r#"{"errorMessage":"Response payload size exceeded maximum allowed payload size (6291556 bytes).","errorType":"Function.ResponseSizeTooLarge"}"#,
        );
    }
    reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
}

async fn next_invocation(pool: &Arc<FunctionPool>, id: u64) -> Response<Body> {
    let Some(inv) = pool.next(id).await else {
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"errorMessage":"closed"}"#,
        );
    };
    let deadline = now_ms() + pool.spec.timeout_seconds * 1000;
    {
        let mut procs = pool.processes.lock().unwrap();
        match procs.get_mut(&id) {
            Some(p) => {
                p.in_flight = Some((inv.request_id.clone(), InFlight { reply: inv.reply }));
            }
            None => {
                // The process died between taking and receiving it.
                pool.pending.fetch_add(1, Ordering::SeqCst);
                let _ = pool.queue_tx.send(inv);
                return reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    r#"{"errorMessage":"gone"}"#,
                );
            }
        }
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("lambda-runtime-aws-request-id", &inv.request_id)
        .header("lambda-runtime-deadline-ms", deadline.to_string())
        .header("lambda-runtime-invoked-function-arn", &pool.spec.arn)
        .header(
            "lambda-runtime-trace-id",
            format!("Root=1-{:08x}-lane;Sampled=0", deadline / 1000),
        )
        .body(Full::new(inv.payload))
        .unwrap()
}

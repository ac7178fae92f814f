//! Hands an opaque payload (the 128-byte NCCL unique id) from rank 0 to every other rank,
//! then, over TCP, keeps the connections open so that each rank learns when another rank
//! vanished instead of waiting forever in a collective.
//!
//! # TCP (`tcp:HOST:PORT`)
//!
//! Rank 0 listens on PORT on every interface (HOST is where the others find it). Each other
//! rank connects, retrying until the timeout since rank 0 may start later, and sends a hello:
//!
//! ```text
//! "INGOTRDV"  u32 version  u64 rank  u64 world  u32 n  n bytes of job id (n = 0: none)
//! ```
//!
//! (integers little-endian). Rank 0 answers `'R' u32 n reason` to refuse, or, once all
//! `world - 1` others have joined, `'P' u32 n payload` to each. A connection that does not
//! start with the magic is dropped silently (a port scanner, say); a hello from another job
//! (both job ids known and different) is refused and rank 0 keeps waiting; another protocol
//! version, another world size, a rank outside the world or a rank that already joined is
//! refused and fails rank 0 at once, as the launch itself is wrong. When rank 0 fails it
//! sends its reason as a refusal to every rank that joined, so that they fail too.
//!
//! Afterwards the connections carry one-byte frames: `'H'` heartbeat (each side, every
//! second), `'B'` bye (a clean [`Session::close`]) and `'L' u64 rank` (rank 0 to the others:
//! that rank was lost). A background thread on rank 0 watches every connection and on a
//! peer's end of stream, error, or 30 s of silence without a bye counts that rank lost and
//! forwards `'L'` to the rest; a peer's thread does the same for its one connection to rank
//! 0 (lost rank 0) and records forwarded ranks. Heartbeats catch a node that dies without
//! closing its sockets. Dropping a [`Session`] without `close` closes the sockets without
//! a bye: to the others that rank vanished.
//!
//! # File (`file:PATH`)
//!
//! Rank 0 writes `"INGOTRDF" u32 version u32 n job-id u32 m payload` to a temporary file in
//! PATH's directory and renames it to PATH, so that no rank reads half a file. The others
//! poll every 100 ms until PATH exists and, when both know a job id, carries theirs (a file
//! left by an earlier run is skipped). [`Session::initialised`] on rank 0 removes PATH once
//! everyone has used the payload; so does dropping rank 0's Session. There is no liveness
//! channel: [`Session::lost_rank`] is always `None`.
//!
//! # Timeouts
//!
//! The caller's `timeout` bounds each rank's whole exchange (rank 0: until every rank has
//! joined; the others: connecting, retried every 100 ms, and waiting for the payload). Every
//! socket operation has its own timeout too: a connect try 2 s, a hello 5 s after
//! connecting (else rank 0 drops the connection and that rank retries), a write 10 s. Name
//! resolution through the system resolver is the one step without a timeout of ours.

use std::fmt;
use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::Launch;

/// The port when neither `--rendezvous` nor `MASTER_PORT` gives one.
pub const DEFAULT_PORT: u16 = 29511;

const MAGIC: &[u8; 8] = b"INGOTRDV";
const FILE_MAGIC: &[u8; 8] = b"INGOTRDF";
const VERSION: u32 = 1;
/// Bounds what a length field may ask us to allocate.
const MAX_PAYLOAD: usize = 1 << 20;
const MAX_TEXT: usize = 4096;

const PAYLOAD: u8 = b'P';
const REFUSE: u8 = b'R';
const BEAT: u8 = b'H';
const BYE: u8 = b'B';
const LOST: u8 = b'L';

/// A legitimate peer sends its hello right after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_ATTEMPT: Duration = Duration::from_secs(2);
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const ACCEPT_POLL: Duration = Duration::from_millis(10);
const FILE_POLL: Duration = Duration::from_millis(100);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const WATCH_POLL: Duration = Duration::from_millis(20);
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence after which a connection counts as lost: far above a heartbeat so that a busy
/// node is not declared dead.
const SILENCE: Duration = Duration::from_secs(30);
const GOODBYE_WAIT: Duration = Duration::from_secs(1);

/// Where the ranks meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendezvous {
    Tcp { host: String, port: u16 },
    File(PathBuf),
}

impl fmt::Display for Rendezvous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rendezvous::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Rendezvous::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// A rendezvous that could not be set up or did not complete; one line each.
#[derive(Debug, Error)]
pub enum RendezvousError {
    #[error("--rendezvous {spec}: {why}; pass tcp:HOST:PORT or file:PATH")]
    BadSpec { spec: String, why: &'static str },
    #[error("rendezvous: {world} ranks but no master address; set MASTER_ADDR to rank 0's host or pass --rendezvous file:PATH on a shared filesystem")]
    NoMasterAddr { world: usize },
    #[error("rendezvous: MASTER_PORT={port} leaves no port above it; lower MASTER_PORT or pass --rendezvous tcp:HOST:PORT")]
    NoPortAbove { port: u16 },
    #[error("rendezvous: rank 0 was given no payload to send (pass it the NCCL unique id)")]
    NoPayload,
    #[error("rendezvous: the payload has {len} bytes, more than the {MAX_PAYLOAD} it can carry")]
    PayloadTooBig { len: usize },
    #[error("rendezvous: port {port} is already in use on rank 0's host ({source}); stop what holds it or pass --rendezvous tcp:{host}:ANOTHER_PORT")]
    PortTaken {
        host: String,
        port: u16,
        source: io::Error,
    },
    #[error("rendezvous: rank 0 cannot listen on port {port} ({source}); pass --rendezvous tcp:{host}:ANOTHER_PORT or file:PATH")]
    Listen {
        host: String,
        port: u16,
        source: io::Error,
    },
    #[error(
        "rendezvous: only {joined} of {world} ranks joined within {secs} (missing ranks {missing})"
    )]
    Missing {
        joined: usize,
        world: usize,
        secs: String,
        missing: String,
    },
    #[error("rendezvous: rank 0 refused the peer at {addr}: {why}")]
    Mismatch { addr: String, why: String },
    #[error("rendezvous: rank 0 cannot send the payload to rank {rank} ({source}); is that node reachable?")]
    Send { rank: usize, source: io::Error },
    #[error("rendezvous: rank {rank} could not reach rank 0 at {at} within {secs} ({last}; is rank 0 running? is the port open?)")]
    Unreachable {
        rank: usize,
        at: String,
        secs: String,
        last: String,
    },
    #[error("rendezvous: rank {rank} reached rank 0 at {at} but not every rank joined within {secs} (rank 0 reports the missing ones)")]
    Waiting {
        rank: usize,
        at: String,
        secs: String,
    },
    #[error("rendezvous: rank 0 at {at} refused rank {rank}: {why}")]
    Refused {
        rank: usize,
        at: String,
        why: String,
    },
    #[error("rendezvous: rank {rank} lost rank 0 at {at} during the exchange ({why})")]
    Broken {
        rank: usize,
        at: String,
        why: String,
    },
    #[error("rendezvous: cannot write {path} ({source}); pass --rendezvous file:PATH in a writable directory every rank shares")]
    FileWrite { path: String, source: io::Error },
    #[error("rendezvous: rank {rank} found no rendezvous file at {path} within {secs} ({seen}; is rank 0 running? do all ranks share that filesystem?)")]
    FileMissing {
        rank: usize,
        path: String,
        secs: String,
        seen: String,
    },
    #[error("rendezvous: cannot start the thread that watches the other ranks ({source})")]
    Watch { source: io::Error },
}

type Result<T, E = RendezvousError> = std::result::Result<T, E>;

impl Rendezvous {
    /// The `--rendezvous` value: `tcp:HOST:PORT` (`tcp:[::1]:PORT` for IPv6) or `file:PATH`.
    /// Without one: TCP at the launch's master address on `MASTER_PORT + 1`, because
    /// torchrun's own store listens on `MASTER_PORT`, or on [`DEFAULT_PORT`].
    pub fn resolve(arg: Option<&str>, launch: &Launch) -> Result<Rendezvous> {
        match arg {
            Some(spec) => parse_spec(spec),
            None => default_for(launch),
        }
    }
}

fn parse_spec(spec: &str) -> Result<Rendezvous> {
    let bad = |why| RendezvousError::BadSpec {
        spec: spec.to_string(),
        why,
    };
    if let Some(path) = spec.strip_prefix("file:") {
        if path.is_empty() || path.ends_with('/') {
            return Err(bad("the file path is empty or a directory"));
        }
        return Ok(Rendezvous::File(PathBuf::from(path)));
    }
    let Some(addr) = spec.strip_prefix("tcp:") else {
        return Err(bad("it starts with neither tcp: nor file:"));
    };
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(bad("no :PORT after the host"));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(Rendezvous::Tcp {
            host: host.to_string(),
            port,
        }),
        _ => Err(bad("the port is not a number from 1 to 65535")),
    }
}

fn default_for(launch: &Launch) -> Result<Rendezvous> {
    let port = match launch.master_port {
        Some(port) => port
            .checked_add(1)
            .ok_or(RendezvousError::NoPortAbove { port })?,
        None => DEFAULT_PORT,
    };
    let host = match &launch.master_addr {
        Some(host) => host.clone(),
        // One process never connects anywhere.
        None if launch.world == 1 => "127.0.0.1".to_string(),
        None => {
            return Err(RendezvousError::NoMasterAddr {
                world: launch.world,
            })
        }
    };
    Ok(Rendezvous::Tcp { host, port })
}

/// What stays after the exchange: the liveness watch (TCP), or the file rank 0 removes.
pub struct Session {
    lost: Arc<AtomicUsize>,
    watcher: Option<Watcher>,
    /// Rank 0's rendezvous file, until removed.
    file: Option<PathBuf>,
}

const NONE_LOST: usize = usize::MAX;

impl Session {
    fn quiet() -> Session {
        Session {
            lost: Arc::new(AtomicUsize::new(NONE_LOST)),
            watcher: None,
            file: None,
        }
    }

    /// The first rank this process has seen vanish (TCP only; None for file).
    pub fn lost_rank(&self) -> Option<usize> {
        let rank = self.lost.load(Ordering::Acquire);
        (rank != NONE_LOST).then_some(rank)
    }

    /// Called once everyone has used the payload (e.g. after the NCCL communicator exists):
    /// rank 0 removes the rendezvous file, so that no later run reads a stale id.
    pub fn initialised(&mut self) {
        if let Some(path) = self.file.take() {
            remove_file(&path);
        }
    }

    /// Clean shutdown: tell the others this rank is leaving normally (not a loss).
    pub fn close(mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.stop(MODE_BYE);
        }
    }
}

impl Drop for Session {
    /// Leaving without [`Session::close`] is vanishing: the sockets close without a bye.
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.stop(MODE_ABORT);
        }
        self.initialised();
    }
}

fn remove_file(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != ErrorKind::NotFound {
            eprintln!(
                "rendezvous: cannot remove {} ({e}); remove it before the next run",
                path.display()
            );
        }
    }
}

/// Passes `payload` (given on rank 0, ignored elsewhere) from rank 0 to every rank, each
/// waiting at most `timeout`. Keep the returned [`Session`] for the whole run: dropping it
/// tells the others this rank vanished.
pub fn exchange(
    rdv: &Rendezvous,
    launch: &Launch,
    payload: Option<&[u8]>,
    timeout: Duration,
) -> Result<(Vec<u8>, Session)> {
    let deadline = Instant::now() + timeout;
    if launch.rank == 0 {
        let payload = payload.ok_or(RendezvousError::NoPayload)?;
        if payload.len() > MAX_PAYLOAD {
            return Err(RendezvousError::PayloadTooBig { len: payload.len() });
        }
        let session = match rdv {
            _ if launch.world <= 1 => Session::quiet(),
            Rendezvous::Tcp { host, port } => {
                lead(host, *port, launch, payload, deadline, timeout)?
            }
            Rendezvous::File(path) => publish(path, launch, payload)?,
        };
        return Ok((payload.to_vec(), session));
    }
    match rdv {
        Rendezvous::Tcp { host, port } => join(host, *port, launch, deadline, timeout),
        Rendezvous::File(path) => wait_for_file(path, launch, deadline, timeout),
    }
}

/// "60 s", or "1.5 s" for the short timeouts of tests.
fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Time left before `deadline`, at least a millisecond: a zero socket timeout is an error.
fn left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

fn timed_out(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

// ---- wire helpers -------------------------------------------------------------------------

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths are bounded by MAX_PAYLOAD / MAX_TEXT before they get here.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_bytes(r: &mut impl Read, max: usize) -> io::Result<Vec<u8>> {
    let n = read_u32(r)? as usize;
    if n > max {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("a field of {n} bytes, above the {max} allowed"),
        ));
    }
    let mut bytes = vec![0u8; n];
    r.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn read_text(r: &mut impl Read) -> io::Result<String> {
    Ok(String::from_utf8_lossy(&read_bytes(r, MAX_TEXT)?).into_owned())
}

fn job_bytes(job: &Option<String>) -> &[u8] {
    let bytes = job.as_deref().unwrap_or_default().as_bytes();
    &bytes[..bytes.len().min(MAX_TEXT)]
}

fn job_from(bytes: Vec<u8>) -> Option<String> {
    (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
}

/// Two job ids name different runs only when both are known.
fn other_job(a: &Option<String>, b: &Option<String>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a != b)
}

fn show_job(job: &Option<String>) -> &str {
    job.as_deref().unwrap_or("(none)")
}

struct Hello {
    rank: u64,
    world: u64,
    job: Option<String>,
}

enum HelloRead {
    /// Not our protocol at all.
    Stray,
    OtherVersion(u32),
    Hello(Hello),
}

fn encode_hello(launch: &Launch) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(launch.rank as u64).to_le_bytes());
    out.extend_from_slice(&(launch.world as u64).to_le_bytes());
    put_bytes(&mut out, job_bytes(&launch.job_id));
    out
}

fn read_hello(r: &mut impl Read) -> io::Result<HelloRead> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Ok(HelloRead::Stray);
    }
    let version = read_u32(r)?;
    if version != VERSION {
        return Ok(HelloRead::OtherVersion(version));
    }
    Ok(HelloRead::Hello(Hello {
        rank: read_u64(r)?,
        world: read_u64(r)?,
        job: job_from(read_bytes(r, MAX_TEXT)?),
    }))
}

fn send_frame(stream: &mut TcpStream, tag: u8, body: &[u8]) -> io::Result<()> {
    let mut out = vec![tag];
    put_bytes(&mut out, body);
    stream.write_all(&out)
}

// ---- rank 0 over TCP ------------------------------------------------------------------------

/// Binds every interface of HOST's family: rank 0 may reach the others through any of them.
fn listen(host: &str, port: u16) -> Result<TcpListener> {
    let any = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let listener = TcpListener::bind((any, port)).map_err(|source| {
        let host = host.to_string();
        if source.kind() == ErrorKind::AddrInUse {
            RendezvousError::PortTaken { host, port, source }
        } else {
            RendezvousError::Listen { host, port, source }
        }
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| RendezvousError::Listen {
            host: host.to_string(),
            port,
            source,
        })?;
    Ok(listener)
}

/// What rank 0 makes of one connection.
enum Admit {
    Joined(usize, TcpStream),
    /// A stray connection or a rank of another job; keep waiting.
    Ignored,
    /// The launch is inconsistent; fail now.
    Fatal(RendezvousError),
}

fn lead(
    host: &str,
    port: u16,
    launch: &Launch,
    payload: &[u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<Session> {
    let listener = listen(host, port)?;
    let mut peers: Vec<Option<TcpStream>> = (0..launch.world).map(|_| None).collect();
    let mut joined = 1;
    while joined < launch.world {
        if Instant::now() >= deadline {
            let e = missing(&peers, timeout);
            refuse_all(&mut peers, &format!("rank 0 gave up: {e}"));
            return Err(e);
        }
        match listener.accept() {
            Ok((stream, addr)) => {
                match admit(stream, &addr.to_string(), launch, &peers, deadline) {
                    Admit::Joined(rank, stream) => {
                        peers[rank] = Some(stream);
                        joined += 1;
                    }
                    Admit::Ignored => {}
                    Admit::Fatal(e) => {
                        refuse_all(&mut peers, &format!("rank 0 gave up: {e}"));
                        return Err(e);
                    }
                }
            }
            // WouldBlock: nobody yet. Anything else (a connection reset before accept, no
            // file descriptors for a moment) is transient; the deadline bounds the loop.
            Err(_) => thread::sleep(ACCEPT_POLL.min(left(deadline))),
        }
    }
    let links = send_payload(&mut peers, payload)?;
    Session::watching(Role::Leader, links)
}

fn missing(peers: &[Option<TcpStream>], timeout: Duration) -> RendezvousError {
    let absent: Vec<String> = (1..peers.len())
        .filter(|&r| peers[r].is_none())
        .map(|r| r.to_string())
        .collect();
    RendezvousError::Missing {
        joined: peers.len() - absent.len(),
        world: peers.len(),
        secs: secs(timeout),
        missing: absent.join(", "),
    }
}

/// Best effort: a peer that does not take the refusal fails on its own timeout.
fn refuse_all(peers: &mut [Option<TcpStream>], why: &str) {
    for stream in peers.iter_mut().flatten() {
        let _ = send_frame(stream, REFUSE, why.as_bytes());
    }
}

fn admit(
    mut stream: TcpStream,
    addr: &str,
    launch: &Launch,
    peers: &[Option<TcpStream>],
    deadline: Instant,
) -> Admit {
    let set_up = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(HELLO_TIMEOUT.min(left(deadline)))))
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true));
    if set_up.is_err() {
        return Admit::Ignored;
    }
    let verdict = match read_hello(&mut stream) {
        Ok(HelloRead::Hello(hello)) => judge(&hello, launch, peers),
        Ok(HelloRead::OtherVersion(v)) => Verdict::Fail(format!(
            "it speaks rendezvous protocol {v}, rank 0 speaks {VERSION}; run the same train binary on every rank"
        )),
        Ok(HelloRead::Stray) | Err(_) => return Admit::Ignored,
    };
    match verdict {
        Verdict::Accept(rank) => Admit::Joined(rank, stream),
        Verdict::Turn(why) => {
            let _ = send_frame(&mut stream, REFUSE, why.as_bytes());
            Admit::Ignored
        }
        Verdict::Fail(why) => {
            let _ = send_frame(&mut stream, REFUSE, why.as_bytes());
            Admit::Fatal(RendezvousError::Mismatch {
                addr: addr.to_string(),
                why,
            })
        }
    }
}

enum Verdict {
    Accept(usize),
    /// Refuse this peer only.
    Turn(String),
    /// Refuse it and fail.
    Fail(String),
}

fn judge(hello: &Hello, launch: &Launch, peers: &[Option<TcpStream>]) -> Verdict {
    if other_job(&hello.job, &launch.job_id) {
        return Verdict::Turn(format!(
            "it belongs to job {}, rank 0 to job {}",
            show_job(&hello.job),
            show_job(&launch.job_id)
        ));
    }
    if hello.world != launch.world as u64 {
        return Verdict::Fail(format!(
            "rank {} runs with a world size of {}, rank 0 with {}; start every rank with the same launcher settings",
            hello.rank, hello.world, launch.world
        ));
    }
    let rank = usize::try_from(hello.rank).unwrap_or(usize::MAX);
    if rank >= launch.world {
        return Verdict::Fail(format!(
            "rank {} is not below the world size {}",
            hello.rank, launch.world
        ));
    }
    if rank == 0 || peers[rank].is_some() {
        return Verdict::Fail(format!(
            "rank {rank} joined twice; give every process its own rank"
        ));
    }
    Verdict::Accept(rank)
}

fn send_payload(peers: &mut [Option<TcpStream>], payload: &[u8]) -> Result<Vec<Link>> {
    let mut links = Vec::with_capacity(peers.len());
    for rank in 1..peers.len() {
        let Some(mut stream) = peers[rank].take() else {
            continue;
        };
        let sent = send_frame(&mut stream, PAYLOAD, payload).and_then(|()| Link::new(rank, stream));
        match sent {
            Ok(link) => links.push(link),
            Err(source) => {
                let e = RendezvousError::Send { rank, source };
                refuse_all(peers, &format!("rank 0 gave up: {e}"));
                return Err(e);
            }
        }
    }
    Ok(links)
}

// ---- the other ranks over TCP -----------------------------------------------------------------

enum Attempt {
    Done(Vec<u8>, TcpStream),
    /// Nobody answered (yet): what went wrong, or `None` when the deadline left no try.
    Retry(Option<String>),
    Fail(FailKind),
}

enum FailKind {
    Waiting,
    Refused(String),
    Broken(String),
}

fn join(
    host: &str,
    port: u16,
    launch: &Launch,
    deadline: Instant,
    timeout: Duration,
) -> Result<(Vec<u8>, Session)> {
    let hello = encode_hello(launch);
    let at = format!("{host}:{port}");
    let (rank, secs) = (launch.rank, secs(timeout));
    let mut last = String::from("no connection was tried");
    loop {
        match attempt(host, port, &hello, deadline) {
            Attempt::Done(payload, stream) => {
                let link = Link::new(0, stream).map_err(|e| RendezvousError::Broken {
                    rank,
                    at: at.clone(),
                    why: e.to_string(),
                })?;
                return Ok((payload, Session::watching(Role::Follower, vec![link])?));
            }
            Attempt::Retry(why) => last = why.unwrap_or(last),
            Attempt::Fail(kind) => {
                return Err(match kind {
                    FailKind::Waiting => RendezvousError::Waiting { rank, at, secs },
                    FailKind::Refused(why) => RendezvousError::Refused { rank, at, why },
                    FailKind::Broken(why) => RendezvousError::Broken { rank, at, why },
                })
            }
        }
        if Instant::now() >= deadline {
            return Err(RendezvousError::Unreachable {
                rank,
                at,
                secs,
                last,
            });
        }
        thread::sleep(RETRY_PAUSE.min(left(deadline)));
    }
}

fn attempt(host: &str, port: u16, hello: &[u8], deadline: Instant) -> Attempt {
    let addrs = match (host, port).to_socket_addrs() {
        Ok(addrs) => addrs.collect::<Vec<_>>(),
        Err(e) => return Attempt::Retry(Some(format!("cannot resolve {host}: {e}"))),
    };
    if addrs.is_empty() {
        return Attempt::Retry(Some(format!("{host} resolves to no address")));
    }
    let mut last = None;
    for addr in addrs {
        if Instant::now() >= deadline {
            break;
        }
        match TcpStream::connect_timeout(&addr, CONNECT_ATTEMPT.min(left(deadline))) {
            Ok(stream) => return converse(stream, hello, deadline),
            Err(e) => last = Some(e.to_string()),
        }
    }
    Attempt::Retry(last)
}

/// Sends the hello and waits for rank 0's answer, until the deadline.
fn converse(mut stream: TcpStream, hello: &[u8], deadline: Instant) -> Attempt {
    let set_up = stream
        .set_nodelay(true)
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT.min(left(deadline)))))
        .and_then(|()| stream.set_read_timeout(Some(left(deadline))))
        .and_then(|()| stream.write_all(hello));
    if let Err(e) = set_up {
        return Attempt::Retry(Some(e.to_string()));
    }
    let mut tag = [0u8; 1];
    loop {
        match stream.read(&mut tag) {
            // Rank 0 dropped us before answering (a slow hello, or it is restarting).
            Ok(0) => {
                let why = "rank 0 closed the connection before answering";
                return Attempt::Retry(Some(why.into()));
            }
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if timed_out(&e) => return Attempt::Fail(FailKind::Waiting),
            Err(e) => return Attempt::Retry(Some(e.to_string())),
        }
    }
    let broken = |e: io::Error| Attempt::Fail(FailKind::Broken(e.to_string()));
    match tag[0] {
        PAYLOAD => match read_bytes(&mut stream, MAX_PAYLOAD) {
            Ok(payload) => Attempt::Done(payload, stream),
            Err(e) => broken(e),
        },
        REFUSE => match read_text(&mut stream) {
            Ok(why) => Attempt::Fail(FailKind::Refused(why)),
            Err(e) => broken(e),
        },
        other => Attempt::Fail(FailKind::Broken(format!(
            "it answered with {other:#04x}, not a rendezvous reply; is another program on that port?"
        ))),
    }
}

// ---- liveness -----------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Rank 0: watches every peer and forwards losses.
    Leader,
    /// Any other rank: watches rank 0 and records what it forwards.
    Follower,
}

const MODE_RUN: u8 = 0;
const MODE_ABORT: u8 = 1;
const MODE_BYE: u8 = 2;

struct Watcher {
    mode: Arc<AtomicU8>,
    thread: JoinHandle<()>,
}

impl Watcher {
    fn stop(self, mode: u8) {
        self.mode.store(mode, Ordering::Release);
        // A panic in the watcher has already been reported; nothing is left to stop.
        let _ = self.thread.join();
    }
}

impl Session {
    fn watching(role: Role, links: Vec<Link>) -> Result<Session> {
        let lost = Arc::new(AtomicUsize::new(NONE_LOST));
        let mode = Arc::new(AtomicU8::new(MODE_RUN));
        let (thread_lost, thread_mode) = (lost.clone(), mode.clone());
        let thread = thread::Builder::new()
            .name("rendezvous-watch".into())
            .spawn(move || watch(role, links, &thread_lost, &thread_mode))
            .map_err(|source| RendezvousError::Watch { source })?;
        Ok(Session {
            lost,
            watcher: Some(Watcher { mode, thread }),
            file: None,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// Said bye.
    Left,
    /// Vanished: end of stream, error or silence without a bye.
    Gone,
}

/// One watched connection, non-blocking, with what has arrived and what waits to go out.
struct Link {
    rank: usize,
    stream: TcpStream,
    inbox: Vec<u8>,
    outbox: Vec<u8>,
    heard: Instant,
    state: State,
}

impl Link {
    fn new(rank: usize, stream: TcpStream) -> io::Result<Link> {
        stream.set_nonblocking(true)?;
        Ok(Link {
            rank,
            stream,
            inbox: Vec::new(),
            outbox: Vec::new(),
            heard: Instant::now(),
            state: State::Open,
        })
    }

    /// Reads what has arrived and returns the ranks it says were lost; updates the state.
    fn receive(&mut self, now: Instant) -> Vec<usize> {
        let closed = self.fill(now);
        let lost = self.parse();
        if self.state == State::Open && (closed || now.duration_since(self.heard) > SILENCE) {
            self.state = State::Gone;
        }
        lost
    }

    /// Moves arrived bytes into the inbox; true when the stream ended or failed.
    fn fill(&mut self, now: Instant) -> bool {
        let mut buf = [0u8; 512];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    self.inbox.extend_from_slice(&buf[..n]);
                    self.heard = now;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
    }

    /// Consumes the complete frames in the inbox.
    fn parse(&mut self) -> Vec<usize> {
        let mut lost = Vec::new();
        let mut at = 0;
        while at < self.inbox.len() && self.state == State::Open {
            match self.inbox[at] {
                BEAT => at += 1,
                BYE => {
                    self.state = State::Left;
                    at += 1;
                }
                LOST if self.inbox.len() >= at + 9 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.inbox[at + 1..at + 9]);
                    lost.push(usize::try_from(u64::from_le_bytes(b)).unwrap_or(usize::MAX));
                    at += 9;
                }
                LOST => break,
                // Not our protocol any more: treat the connection as broken.
                _ => {
                    self.state = State::Gone;
                    at = self.inbox.len();
                }
            }
        }
        self.inbox.drain(..at);
        lost
    }

    /// Writes what the socket takes now; a failed write means the other side is gone.
    fn flush(&mut self) {
        while !self.outbox.is_empty() && self.state == State::Open {
            match self.stream.write(&self.outbox) {
                Ok(0) => self.state = State::Gone,
                Ok(n) => {
                    self.outbox.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => self.state = State::Gone,
            }
        }
    }
}

/// Records `rank` as lost unless an earlier loss was recorded.
fn note(lost: &AtomicUsize, rank: usize) {
    let _ = lost.compare_exchange(NONE_LOST, rank, Ordering::AcqRel, Ordering::Acquire);
}

/// The watcher thread: see the module comment.
fn watch(role: Role, mut links: Vec<Link>, lost: &AtomicUsize, mode: &AtomicU8) {
    let mut beat = Instant::now();
    while !links.is_empty() {
        match mode.load(Ordering::Acquire) {
            MODE_ABORT => return,
            MODE_BYE => return goodbye(links),
            _ => {}
        }
        let now = Instant::now();
        for link in links.iter_mut() {
            for rank in link.receive(now) {
                if role == Role::Follower {
                    note(lost, rank);
                }
            }
        }
        let gone: Vec<usize> = links
            .iter()
            .filter(|l| l.state == State::Gone)
            .map(|l| l.rank)
            .collect();
        links.retain(|l| l.state == State::Open);
        for rank in gone {
            note(lost, rank);
            if role == Role::Leader {
                for link in links.iter_mut() {
                    link.outbox.push(LOST);
                    link.outbox.extend_from_slice(&(rank as u64).to_le_bytes());
                }
            }
        }
        if now.duration_since(beat) >= HEARTBEAT {
            links.iter_mut().for_each(|l| l.outbox.push(BEAT));
            beat = now;
        }
        links.iter_mut().for_each(Link::flush);
        thread::sleep(WATCH_POLL);
    }
    // Every link is closed; what was lost stays recorded. Wait for close/drop to return.
    while mode.load(Ordering::Acquire) == MODE_RUN {
        thread::sleep(WATCH_POLL);
    }
}

/// Sends bye on every link, then waits (briefly) until the other side closes, so that the
/// bye is read before the connection ends rather than lost to a reset.
fn goodbye(mut links: Vec<Link>) {
    let until = Instant::now() + GOODBYE_WAIT;
    for link in links.iter_mut() {
        link.outbox.push(BYE);
        while link.state == State::Open && !link.outbox.is_empty() && Instant::now() < until {
            link.flush();
            thread::sleep(Duration::from_millis(1));
        }
        let _ = link.stream.shutdown(Shutdown::Write);
    }
    while !links.is_empty() && Instant::now() < until {
        let now = Instant::now();
        links.retain_mut(|l| {
            l.inbox.clear();
            !l.fill(now)
        });
        thread::sleep(WATCH_POLL);
    }
}

// ---- file ---------------------------------------------------------------------------------------

fn encode_file(launch: &Launch, payload: &[u8]) -> Vec<u8> {
    let mut out = FILE_MAGIC.to_vec();
    out.extend_from_slice(&VERSION.to_le_bytes());
    put_bytes(&mut out, job_bytes(&launch.job_id));
    put_bytes(&mut out, payload);
    out
}

/// The job id and payload of a rendezvous file; `None` when it is not one of ours.
fn decode_file(bytes: &[u8]) -> Option<(Option<String>, Vec<u8>)> {
    let mut r = bytes;
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).ok()?;
    if &magic != FILE_MAGIC || read_u32(&mut r).ok()? != VERSION {
        return None;
    }
    let job = job_from(read_bytes(&mut r, MAX_TEXT).ok()?);
    let payload = read_bytes(&mut r, MAX_PAYLOAD).ok()?;
    r.is_empty().then_some((job, payload))
}

/// Writes PATH atomically: a temporary file beside it, synced, then renamed over it.
fn publish(path: &Path, launch: &Launch, payload: &[u8]) -> Result<Session> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.as_deref().unwrap_or("rendezvous"),
        std::process::id()
    ));
    let failed = |p: &Path, source| RendezvousError::FileWrite {
        path: p.display().to_string(),
        source,
    };
    let written = fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(&encode_file(launch, payload))?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(failed(path, e));
    }
    let mut session = Session::quiet();
    session.file = Some(path.to_path_buf());
    Ok(session)
}

fn wait_for_file(
    path: &Path,
    launch: &Launch,
    deadline: Instant,
    timeout: Duration,
) -> Result<(Vec<u8>, Session)> {
    let shown = path.display().to_string();
    let mut seen = String::from("it never appeared");
    loop {
        match fs::read(path) {
            Ok(bytes) => match decode_file(&bytes) {
                Some((job, payload)) if !other_job(&job, &launch.job_id) => {
                    return Ok((payload, Session::quiet()))
                }
                Some((job, _)) => {
                    seen = format!(
                        "the file there is from job {}, this rank is in job {}",
                        show_job(&job),
                        show_job(&launch.job_id)
                    )
                }
                None => seen = "the file there is not a rendezvous file".into(),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => seen = format!("cannot read it: {e}"),
        }
        if Instant::now() >= deadline {
            return Err(RendezvousError::FileMissing {
                rank: launch.rank,
                path: shown,
                secs: secs(timeout),
                seen,
            });
        }
        thread::sleep(FILE_POLL.min(left(deadline)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::Launcher;

    fn launch(rank: usize, world: usize, job: Option<&str>) -> Launch {
        Launch {
            launcher: Launcher::Torchrun,
            rank,
            world,
            local_rank: rank,
            master_addr: Some("127.0.0.1".into()),
            master_port: None,
            job_id: job.map(String::from),
        }
    }

    /// A port nothing listens on right now.
    fn free_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        l.local_addr().expect("its address").port()
    }

    fn tcp(port: u16) -> Rendezvous {
        Rendezvous::Tcp {
            host: "127.0.0.1".into(),
            port,
        }
    }

    const ID: [u8; 128] = {
        let mut id = [0u8; 128];
        let mut i = 0;
        while i < 128 {
            id[i] = (i * 7 + 3) as u8;
            i += 1;
        }
        id
    };

    type Outcome = Result<(Vec<u8>, Session)>;

    /// Runs one exchange per (rank, world, job) on its own thread; results in that order.
    fn run_ranks(
        rdv: &Rendezvous,
        ranks: &[(usize, usize, Option<&str>)],
        timeout: Duration,
    ) -> Vec<Outcome> {
        let handles: Vec<_> = ranks
            .iter()
            .map(|&(rank, world, job)| {
                let (rdv, l) = (rdv.clone(), launch(rank, world, job));
                thread::spawn(move || {
                    let payload = (rank == 0).then_some(&ID[..]);
                    exchange(&rdv, &l, payload, timeout)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a rank thread panicked"))
            .collect()
    }

    fn sessions(outcomes: Vec<Outcome>) -> Vec<Session> {
        outcomes
            .into_iter()
            .map(|o| {
                let (payload, session) = o.expect("every rank completes");
                assert_eq!(payload, ID);
                session
            })
            .collect()
    }

    fn error(outcome: &Outcome) -> String {
        match outcome {
            Err(e) => e.to_string(),
            Ok(_) => panic!("expected the exchange to fail"),
        }
    }

    /// Polls `f` for up to 3 s.
    fn eventually(f: impl Fn() -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if f() {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        f()
    }

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn the_payload_reaches_every_rank() {
        for world in 2..=4 {
            let ranks: Vec<_> = (0..world).map(|r| (r, world, Some("j"))).collect();
            let all = sessions(run_ranks(&tcp(free_port()), &ranks, T));
            assert!(all.iter().all(|s| s.lost_rank().is_none()));
            all.into_iter().for_each(Session::close);
        }
    }

    #[test]
    fn one_process_needs_no_rendezvous() {
        // Port 1 would need privileges: nothing is bound.
        let (payload, session) =
            exchange(&tcp(1), &launch(0, 1, None), Some(&ID), T).expect("alone");
        assert_eq!(payload, ID);
        assert_eq!(session.lost_rank(), None);
    }

    #[test]
    fn rank_0_without_a_payload_is_refused() {
        let e = exchange(&tcp(1), &launch(0, 2, None), None, T).map(|_| ());
        assert!(matches!(e, Err(RendezvousError::NoPayload)));
    }

    #[test]
    fn missing_ranks_are_listed_within_the_timeout() {
        let timeout = Duration::from_millis(1500);
        let start = Instant::now();
        let out = run_ranks(&tcp(free_port()), &[(0, 4, None), (2, 4, None)], timeout);
        assert!(start.elapsed() < timeout + Duration::from_secs(2));
        assert_eq!(
            error(&out[0]),
            "rendezvous: only 2 of 4 ranks joined within 1.5 s (missing ranks 1, 3)"
        );
        let e = error(&out[1]);
        assert!(e.starts_with("rendezvous: rank 0 at 127.0.0.1:"), "{e}");
        assert!(
            e.contains("refused rank 2: rank 0 gave up: rendezvous: only 2 of 4"),
            "{e}"
        );
    }

    #[test]
    fn a_rank_without_rank_0_gives_up_within_the_timeout() {
        let port = free_port();
        let start = Instant::now();
        let out = run_ranks(&tcp(port), &[(3, 4, None)], Duration::from_secs(1));
        assert!(start.elapsed() < Duration::from_secs(3));
        let e = error(&out[0]);
        assert!(
            e.starts_with(&format!(
                "rendezvous: rank 3 could not reach rank 0 at 127.0.0.1:{port} within 1 s ("
            )),
            "{e}"
        );
        assert!(e.ends_with("is rank 0 running? is the port open?)"), "{e}");
    }

    #[test]
    fn rank_0_may_start_late() {
        let rdv = tcp(free_port());
        let peer = {
            let rdv = rdv.clone();
            thread::spawn(move || exchange(&rdv, &launch(1, 2, None), None, T))
        };
        thread::sleep(Duration::from_millis(400));
        let (_, s0) = exchange(&rdv, &launch(0, 2, None), Some(&ID), T).expect("rank 0");
        let (payload, s1) = peer.join().expect("peer thread").expect("peer");
        assert_eq!(payload, ID);
        s1.close();
        s0.close();
    }

    #[test]
    fn a_taken_port_is_named() {
        let holder = TcpListener::bind("0.0.0.0:0").expect("hold a port");
        let port = holder.local_addr().expect("address").port();
        let e = error(&run_ranks(&tcp(port), &[(0, 2, None)], T)[0]);
        assert!(
            e.starts_with(&format!("rendezvous: port {port} is already in use")),
            "{e}"
        );
        assert!(e.contains("--rendezvous tcp:127.0.0.1:ANOTHER_PORT"), "{e}");
    }

    #[test]
    fn another_world_size_fails_rank_0_and_the_peer() {
        let out = run_ranks(&tcp(free_port()), &[(0, 2, None), (1, 3, None)], T);
        let e = error(&out[0]);
        assert!(
            e.contains("rank 1 runs with a world size of 3, rank 0 with 2"),
            "{e}"
        );
        let e = error(&out[1]);
        assert!(
            e.contains("refused rank 1: rank 1 runs with a world size of 3"),
            "{e}"
        );
    }

    #[test]
    fn a_duplicate_rank_fails_rank_0() {
        let out = run_ranks(
            &tcp(free_port()),
            &[(0, 3, None), (1, 3, None), (1, 3, None)],
            T,
        );
        assert!(
            error(&out[0]).contains("rank 1 joined twice"),
            "{}",
            error(&out[0])
        );
        assert!(out[1].is_err() && out[2].is_err());
    }

    #[test]
    fn a_rank_of_another_job_is_turned_away() {
        let rdv = tcp(free_port());
        let lead = {
            let rdv = rdv.clone();
            thread::spawn(move || exchange(&rdv, &launch(0, 2, Some("new")), Some(&ID), T))
        };
        // The stale rank asks first (retrying until rank 0 listens) and is turned away...
        let stale = exchange(&rdv, &launch(1, 2, Some("old")), None, T).map(|_| ());
        let e = error(&stale.map(|()| (Vec::new(), Session::quiet())));
        assert!(
            e.ends_with("refused rank 1: it belongs to job old, rank 0 to job new"),
            "{e}"
        );
        // ...and rank 0 still takes the rank of its own job.
        let (payload, s1) = exchange(&rdv, &launch(1, 2, Some("new")), None, T).expect("peer");
        assert_eq!(payload, ID);
        let (_, s0) = lead.join().expect("thread").expect("rank 0 completes");
        s1.close();
        s0.close();
    }

    #[test]
    fn a_stray_connection_is_ignored() {
        let rdv = tcp(free_port());
        let Rendezvous::Tcp { port, .. } = rdv else {
            unreachable!()
        };
        let lead = {
            let rdv = rdv.clone();
            thread::spawn(move || exchange(&rdv, &launch(0, 2, None), Some(&ID), T))
        };
        thread::sleep(Duration::from_millis(200));
        let mut stray = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stray.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
        let peer = exchange(&rdv, &launch(1, 2, None), None, T).expect("peer");
        let s0 = lead.join().expect("thread").expect("rank 0").1;
        assert_eq!(peer.0, ID);
        peer.1.close();
        s0.close();
    }

    #[test]
    fn a_vanished_peer_is_reported_by_rank_0_and_forwarded() {
        let ranks = [(0, 3, None), (1, 3, None), (2, 3, None)];
        let mut all = sessions(run_ranks(&tcp(free_port()), &ranks, T));
        let s2 = all.pop().expect("rank 2");
        drop(all.pop().expect("rank 1"));
        let s0 = all.pop().expect("rank 0");
        assert!(
            eventually(|| s0.lost_rank() == Some(1)),
            "rank 0 saw {:?}",
            s0.lost_rank()
        );
        assert!(
            eventually(|| s2.lost_rank() == Some(1)),
            "rank 2 saw {:?}",
            s2.lost_rank()
        );
        s2.close();
        s0.close();
    }

    #[test]
    fn a_vanished_rank_0_is_reported() {
        let mut all = sessions(run_ranks(
            &tcp(free_port()),
            &[(0, 2, None), (1, 2, None)],
            T,
        ));
        let s1 = all.pop().expect("rank 1");
        drop(all);
        assert!(eventually(|| s1.lost_rank() == Some(0)));
    }

    #[test]
    fn closing_is_not_a_loss() {
        let ranks = [(0, 3, None), (1, 3, None), (2, 3, None)];
        let mut all = sessions(run_ranks(&tcp(free_port()), &ranks, T));
        let s2 = all.pop().expect("rank 2");
        all.pop().expect("rank 1").close();
        let s0 = all.pop().expect("rank 0");
        thread::sleep(Duration::from_millis(300));
        assert_eq!(s0.lost_rank(), None);
        s0.close();
        thread::sleep(Duration::from_millis(300));
        assert_eq!(s2.lost_rank(), None);
        s2.close();
    }

    #[test]
    fn the_file_reaches_every_rank_and_is_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("rdv");
        let rdv = Rendezvous::File(path.clone());
        let mut all = sessions(run_ranks(
            &rdv,
            &[(1, 3, Some("j")), (2, 3, None), (0, 3, Some("j"))],
            T,
        ));
        assert!(all.iter().all(|s| s.lost_rank().is_none()));
        assert!(path.exists());
        all.iter_mut().for_each(Session::initialised);
        assert!(!path.exists());
        let leftovers: Vec<_> = fs::read_dir(dir.path()).expect("list").collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_stale_file_of_another_job_is_skipped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("rdv");
        fs::write(&path, encode_file(&launch(0, 2, Some("old")), b"stale")).expect("stale file");
        let rdv = Rendezvous::File(path.clone());
        let peer = {
            let rdv = rdv.clone();
            thread::spawn(move || exchange(&rdv, &launch(1, 2, Some("new")), None, T))
        };
        thread::sleep(Duration::from_millis(300));
        let (_, mut s0) = exchange(&rdv, &launch(0, 2, Some("new")), Some(&ID), T).expect("rank 0");
        let (payload, _) = peer.join().expect("thread").expect("peer");
        assert_eq!(payload, ID);
        s0.initialised();
        assert!(!path.exists());
    }

    #[test]
    fn a_file_that_never_comes_is_reported() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("rdv");
        fs::write(&path, encode_file(&launch(0, 2, Some("old")), b"stale")).expect("stale file");
        let start = Instant::now();
        let out = run_ranks(
            &Rendezvous::File(path),
            &[(1, 2, Some("new"))],
            Duration::from_millis(500),
        );
        assert!(start.elapsed() < Duration::from_secs(2));
        let e = error(&out[0]);
        assert!(
            e.starts_with("rendezvous: rank 1 found no rendezvous file at "),
            "{e}"
        );
        assert!(
            e.contains("within 0.5 s (the file there is from job old, this rank is in job new;"),
            "{e}"
        );
    }

    #[test]
    fn an_unwritable_file_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("no").join("such").join("rdv");
        let e = error(&run_ranks(&Rendezvous::File(path.clone()), &[(0, 2, None)], T)[0]);
        assert!(
            e.starts_with(&format!("rendezvous: cannot write {}", path.display())),
            "{e}"
        );
    }

    #[test]
    fn resolve_reads_the_flag_or_the_launch() {
        let mut l = launch(1, 4, None);
        l.master_addr = Some("node01".into());
        l.master_port = Some(29500);
        let tcp_at = |host: &str, port| Rendezvous::Tcp {
            host: host.into(),
            port,
        };
        assert_eq!(
            Rendezvous::resolve(None, &l).ok(),
            Some(tcp_at("node01", 29501))
        );
        l.master_port = None;
        assert_eq!(
            Rendezvous::resolve(None, &l).ok(),
            Some(tcp_at("node01", DEFAULT_PORT))
        );
        let given = Rendezvous::resolve(Some("tcp:10.1.2.3:4000"), &l).ok();
        assert_eq!(given, Some(tcp_at("10.1.2.3", 4000)));
        let v6 = Rendezvous::resolve(Some("tcp:[::1]:4000"), &l).ok();
        assert_eq!(v6, Some(tcp_at("::1", 4000)));
        let file = Rendezvous::resolve(Some("file:/shared/run/rdv"), &l).ok();
        assert_eq!(file, Some(Rendezvous::File("/shared/run/rdv".into())));
        assert_eq!(
            Rendezvous::resolve(Some("file:/x"), &l)
                .map(|r| r.to_string())
                .ok()
                .as_deref(),
            Some("file:/x")
        );
    }

    #[test]
    fn resolve_refuses_bad_specs() {
        let l = launch(1, 4, None);
        for (spec, why) in [
            ("udp:h:1", "neither tcp: nor file:"),
            ("tcp:h", "no :PORT"),
            ("tcp::80", "the host is empty"),
            ("tcp:h:0", "not a number from 1 to 65535"),
            ("tcp:h:http", "not a number from 1 to 65535"),
            ("file:", "empty or a directory"),
        ] {
            let e = Rendezvous::resolve(Some(spec), &l)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("--rendezvous {spec}: ")), "{e}");
            assert!(
                e.contains(why) && e.ends_with("pass tcp:HOST:PORT or file:PATH"),
                "{e}"
            );
        }
    }

    #[test]
    fn resolve_needs_a_master_address_for_several_ranks() {
        let mut l = launch(1, 4, None);
        l.master_addr = None;
        let e = Rendezvous::resolve(None, &l)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert_eq!(e, "rendezvous: 4 ranks but no master address; set MASTER_ADDR to rank 0's host or pass --rendezvous file:PATH on a shared filesystem");
        assert!(Rendezvous::resolve(Some("file:/shared/rdv"), &l).is_ok());
        let alone = launch(0, 1, None);
        let alone = Launch {
            master_addr: None,
            ..alone
        };
        assert!(Rendezvous::resolve(None, &alone).is_ok());
        let mut top = launch(0, 2, None);
        top.master_port = Some(u16::MAX);
        let e = Rendezvous::resolve(None, &top)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("rendezvous: MASTER_PORT=65535 leaves no port above it"),
            "{e}"
        );
    }
}

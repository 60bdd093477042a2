//! The command line: `rendezvous [serve]` runs the server; `rendezvous wait`
//! and `rendezvous probe` are clients of it, for shells, CI jobs and exec
//! probes, built on [`crate::client`]. Kept in the library, not the binary,
//! so that their parsing and outcomes can be tested like the rest.

use std::{
    ffi::OsString,
    io::{Read, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    Config,
    client::{Client, ClientError, ClientOptions, DEFAULT_SERVER, Ended, Try, attempt_key},
    human::whole_millis,
    json::{JsonError, JsonGroup, JsonMeeting},
    pairing::{Role, Withdrawal},
};

/// How long `wait` tries to withdraw its wait after SIGINT or SIGTERM: a
/// server that is gone must not hold up a job that was told to stop.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(2);

/// `rendezvous`: the server, and its command-line clients.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "A small, fast gRPC rendezvous service: two callers with the same id meet and exchange a payload.",
    after_help = "With no subcommand, or with only flags, rendezvous runs `serve`: \
                  `rendezvous --grpc-addr ...` is `rendezvous serve --grpc-addr ...`."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(Box<Config>),
    /// Wait for the other party with the same id, and print its payload.
    #[command(after_help = WAIT_EXIT_CODES)]
    Wait(WaitArgs),
    /// Check a server's gRPC health, like grpc_health_probe: exit 0 only
    /// when it is SERVING.
    #[command(after_help = PROBE_EXIT_CODES)]
    Probe(ProbeArgs),
}

const WAIT_EXIT_CODES: &str = "Exit codes:
  0    paired: the other party's payload is on stdout
  1    any other error
  2    invalid input: a bad flag, id or payload, or a file that cannot be read
  3    timed out: nobody came with this id before the timeout
  4    unavailable: the server cannot be reached, is shutting down or is full
  5    unauthenticated: no token, or a token the server does not accept
  130  interrupted (SIGINT, Ctrl-C): a wait with an attempt key was withdrawn first
  143  terminated (SIGTERM, a cancelled job): likewise

On SIGINT or SIGTERM, a wait sent with an attempt key (--attempt-key, or
--retry's own) is withdrawn before exiting: nobody is paired with it
afterwards. Only a run that cannot say so (SIGKILL, a lost machine or
network) leaves its place held for the server's --attempt-grace.";

const PROBE_EXIT_CODES: &str = "Exit codes:
  0  SERVING
  1  any other error
  2  invalid input: a bad flag, an unknown service, a file that cannot be read
  3  timed out: no answer before the timeout
  4  unavailable: the server cannot be reached, or it answered NOT_SERVING";

/// How `wait` and `probe` end, as the exit status scripts test. The numbers
/// are part of the interface: never renumber one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Paired (`wait`), or SERVING (`probe`).
    Ok = 0,
    /// Anything not below.
    Other = 1,
    /// A bad flag, id or payload, or an unreadable file (clap's own usage
    /// errors exit 2 as well).
    InvalidInput = 2,
    /// Nobody came before the deadline, or no answer came before it.
    TimedOut = 3,
    /// The server cannot be reached, is shutting down or full, or is not
    /// serving.
    Unavailable = 4,
    /// The server refused the token (or, over mTLS, the certificate).
    Unauthenticated = 5,
    /// SIGINT (Ctrl-C): 128 + 2, as a shell reports a process it killed.
    Interrupted = 130,
    /// SIGTERM: 128 + 15.
    Terminated = 143,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

impl Exit {
    /// The exit for a call that ended with `status`.
    pub fn of_status(status: &Status) -> Self {
        match status.code() {
            Code::Ok => Self::Ok,
            Code::DeadlineExceeded => Self::TimedOut,
            Code::Unavailable | Code::ResourceExhausted => Self::Unavailable,
            Code::Unauthenticated | Code::PermissionDenied => Self::Unauthenticated,
            Code::InvalidArgument | Code::NotFound | Code::OutOfRange => Self::InvalidInput,
            _ => Self::Other,
        }
    }
}

/// The arguments as given, with `serve` put in front when no subcommand
/// was named, so that `rendezvous` and `rendezvous --grpc-addr ...` run the
/// server as they always have.
pub fn with_default_subcommand(args: Vec<OsString>) -> Vec<OsString> {
    let first = args.get(1).and_then(|arg| arg.to_str());
    let named = matches!(
        first,
        Some("serve" | "wait" | "probe" | "help" | "-h" | "--help" | "-V" | "--version")
    );
    if named {
        return args;
    }
    let mut args = args;
    args.insert(1.min(args.len()), "serve".into());
    args
}

/// Where the server is and how to reach it, for `wait` and `probe`.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The server's gRPC address: HOST:PORT, http://HOST:PORT, or
    /// https://HOST:PORT for TLS.
    #[arg(long, env = "RENDEZVOUS_SERVER", value_name = "ADDR", default_value = DEFAULT_SERVER)]
    pub server: String,

    /// Use TLS, trusting only these PEM CA certificates (without it, an
    /// https:// server is checked against the system's CAs).
    #[arg(long, env = "RENDEZVOUS_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Present this PEM client certificate (mTLS). Needs --client-key.
    #[arg(
        long,
        env = "RENDEZVOUS_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,

    /// The PEM private key for --client-cert.
    #[arg(
        long,
        env = "RENDEZVOUS_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,

    /// Expect the server's certificate to name this host rather than the
    /// address's.
    #[arg(long, env = "RENDEZVOUS_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

impl Connection {
    fn options(&self) -> Result<ClientOptions, ClientError> {
        let mut options = ClientOptions::new(&self.server)?;
        if let Some(ca) = &self.tls_ca {
            options = options.tls_ca(ca);
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            options = options.client_identity(cert, key);
        }
        if let Some(name) = &self.tls_server_name {
            options = options.tls_server_name(name);
        }
        Ok(options)
    }
}

/// `rendezvous wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The meeting id both parties agreed on.
    pub id: String,

    /// Where the server is, and how to trust it.
    #[command(flatten)]
    pub connection: Connection,

    /// Send the bearer token in this file (its first line), for a server
    /// run with --auth-token-file. Tokens never go on the command line.
    #[arg(long, env = "RENDEZVOUS_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Wait for a group of N callers, this one included (WaitForParties),
    /// rather than for one other party: a barrier. Its answer (every
    /// member's payload, and this caller's position) comes with --json.
    #[arg(long, value_name = "N")]
    pub parties: Option<u32>,

    /// The payload to hand the other party (with --parties, every member).
    #[arg(long, value_name = "TEXT", conflicts_with = "payload_file")]
    pub payload: Option<String>,

    /// Read the payload from this file; `-` reads stdin.
    #[arg(long, value_name = "PATH")]
    pub payload_file: Option<PathBuf>,

    /// Give up after this long (250ms, 30s, 5m, 1h, ...), sent as the
    /// call's deadline. Without it, the server's --default-wait decides. The
    /// server cuts a longer one to its --max-wait, and its timeout message
    /// then says so.
    #[arg(long, env = "RENDEZVOUS_TIMEOUT", value_name = "DURATION", value_parser = crate::config::positive_duration)]
    pub timeout: Option<Duration>,

    /// Keep trying while the server is unavailable or full (a rolling
    /// restart), or the connection broke, with backoff and jitter, until
    /// --timeout. Every try sends one attempt key, so that a try cut off
    /// gets its place or its answer back (--attempt-key, or a random one).
    #[arg(long, requires = "timeout")]
    pub retry: bool,

    /// The attempt key to send: the same on every run that is a retry of
    /// one wait (say, a CI job's id and attempt), so that a run whose
    /// connection was cut, or that was killed without a word (SIGKILL, a
    /// lost machine), can be run again within the server's --attempt-grace
    /// and get its place or its answer back. A run stopped by SIGINT or
    /// SIGTERM withdraws its wait instead: nobody is paired with it, and a
    /// run with the same key within the grace is refused (CANCELLED).
    #[arg(long, env = "RENDEZVOUS_ATTEMPT_KEY", value_name = "KEY")]
    pub attempt_key: Option<String>,

    /// With --attempt-key: how many runs of this wait came before this one
    /// (0 on the first, 1 on the first retry, ...). A run cut off can still
    /// reach the server after its retry; with the count, the server knows
    /// which is the later. (--retry counts its own tries.)
    #[arg(
        long,
        env = "RENDEZVOUS_PREVIOUS_ATTEMPTS",
        value_name = "N",
        requires = "attempt_key",
        conflicts_with = "retry",
        default_value_t = 0
    )]
    pub previous_attempts: u32,

    /// Print one JSON object on stdout, the answer or the error, in
    /// proto3's JSON form (the payload in base64).
    #[arg(long)]
    pub json: bool,

    /// Send this W3C traceparent (00-TRACEID-PARENTID-FLAGS), so that the
    /// server logs this call, and its partner's, under that trace id. From
    /// TRACEPARENT, as a CI job's tracing sets it; a malformed one is ignored.
    #[arg(long, env = "TRACEPARENT", value_name = "TRACEPARENT")]
    pub traceparent: Option<String>,
}

/// `rendezvous probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Where the server is, and how to trust it.
    #[command(flatten)]
    pub connection: Connection,

    /// The service to ask about: "" for the server as a whole (liveness),
    /// rendezvous.v1.Sync for readiness to pair.
    #[arg(long, default_value = "", value_name = "NAME")]
    pub service: String,

    /// Give up after this long, whether the server is slow to answer or
    /// slow to accept the connection.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = crate::config::positive_duration)]
    pub timeout: Duration,
}

/// Runs `rendezvous wait`: the partner's payload to stdout, raw; the role
/// and wait (or what went wrong) to stderr; or all of it as JSON on stdout.
/// With `--parties`, the group's position and wait go to stderr, and its
/// payloads come only with `--json`: a group has many, and raw bytes one
/// after another could not be told apart.
pub async fn wait(args: WaitArgs) -> Exit {
    let report = Report { json: args.json };
    let payload = match read_payload(&args) {
        Ok(payload) => payload,
        Err(message) => return report.failed(Code::InvalidArgument, &message, Exit::InvalidInput),
    };
    let options = args
        .connection
        .options()
        .and_then(|options| match &args.token_file {
            Some(path) => options.token_file(path),
            None => Ok(options),
        })
        .map(|options| match &args.traceparent {
            Some(traceparent) => options.traceparent(traceparent),
            None => options,
        });
    let client = match options.and_then(|options| Client::connect_lazily(&options)) {
        Ok(client) => client,
        Err(error) => return report.client_error(&error),
    };
    let on_retry = |status: &Status, pause| {
        say(format_args!(
            "rendezvous wait: {}: {}; trying again in {}",
            code_name(status.code()),
            status.message(),
            whole_millis(pause)
        ));
    };
    let own = payload.clone();
    // --retry's key is made here, not by the client, so that a run that
    // gives up can withdraw its wait by it.
    let key = match (&args.attempt_key, args.retry) {
        (Some(key), _) => key.clone(),
        (None, true) => attempt_key(),
        (None, false) => String::new(),
    };
    let attempt = Try {
        key: &key,
        previous: args.previous_attempts,
    };
    let call = async {
        match (args.parties, args.retry, args.timeout) {
            (None, true, Some(timeout)) => {
                client
                    .wait_retrying(&args.id, payload, timeout, &key, on_retry)
                    .await
            }
            (None, _, _) => {
                client
                    .wait_with_key(&args.id, payload, args.timeout, attempt)
                    .await
            }
            (Some(parties), true, Some(timeout)) => {
                client
                    .gather_retrying(&args.id, parties, payload, timeout, &key, on_retry)
                    .await
            }
            (Some(parties), _, _) => {
                client
                    .gather_with_key(&args.id, parties, payload, args.timeout, attempt)
                    .await
            }
        }
    };
    let mut stopped = None;
    let stop = async {
        stopped = Some(stop_signal().await);
    };
    let ended = match key.is_empty() {
        // Without a key, the wait ends as its connection closes: there is
        // nothing to withdraw.
        true => tokio::select! {
            result = call => Ended::Answered(result),
            () = stop => Ended::GaveUp(Ok(Withdrawal::Unknown)),
        },
        false => {
            client
                .unless_given_up(&args.id, &key, call, stop, WITHDRAW_TIMEOUT)
                .await
        }
    };
    let result = match ended {
        Ended::Answered(result) => result,
        Ended::GaveUp(found) => {
            let exit = stopped.expect("given up on a signal");
            if !key.is_empty() {
                gave_up(&report, exit, found);
            }
            return exit;
        }
    };
    match result {
        Ok(meeting) if args.parties.is_some() => {
            if report.json {
                report.print_json(&JsonGroup::new(&meeting, &own));
            } else {
                say(format_args!(
                    "completed a group of {} at position {} after {}",
                    meeting.parties(),
                    meeting.position,
                    whole_millis(meeting.waited)
                ));
            }
            Exit::Ok
        }
        Ok(meeting) => {
            if report.json {
                report.print_json(&JsonMeeting::from(&meeting));
            } else {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(&meeting.peer().payload);
                let _ = stdout.flush();
                let role = match meeting.role() {
                    Role::First => "first",
                    Role::Second => "second",
                };
                say(format_args!(
                    "paired as the {role} party after {}",
                    whole_millis(meeting.waited)
                ));
            }
            Exit::Ok
        }
        Err(status) => report.failed(status.code(), status.message(), Exit::of_status(&status)),
    }
}

/// Completes on the first SIGINT or SIGTERM, with the exit it calls for.
/// A second one exits at once, for a user who will not wait for the
/// withdrawal.
async fn stop_signal() -> Exit {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).expect("can install a SIGINT handler");
    let mut terminate = signal(SignalKind::terminate()).expect("can install a SIGTERM handler");
    let exit = tokio::select! {
        _ = interrupt.recv() => Exit::Interrupted,
        _ = terminate.recv() => Exit::Terminated,
    };
    tokio::spawn(async move {
        let again = tokio::select! {
            _ = interrupt.recv() => Exit::Interrupted,
            _ = terminate.recv() => Exit::Terminated,
        };
        std::process::exit(again as i32);
    });
    exit
}

/// Says what withdrawing the wait of a run told to stop found.
fn gave_up(report: &Report, exit: Exit, found: Result<Withdrawal, Status>) {
    let signal = match exit {
        Exit::Terminated => "SIGTERM",
        _ => "SIGINT",
    };
    let message = withdrawal_found(found);
    report.failed(Code::Cancelled, &format!("{signal}: {message}"), exit);
}

/// What a withdrawal found, in words.
fn withdrawal_found(found: Result<Withdrawal, Status>) -> String {
    match found {
        Ok(Withdrawal::Withdrawn) => "withdrew the wait: nobody will be paired with it".to_owned(),
        Ok(Withdrawal::Met(meeting)) if meeting.parties() == 2 => format!(
            "too late to withdraw: the wait had already paired, as the {} party; its partner \
             was told OK",
            match meeting.role() {
                Role::First => "first",
                Role::Second => "second",
            }
        ),
        Ok(Withdrawal::Met(meeting)) => format!(
            "too late to withdraw: the wait had already completed its group of {} at position \
             {}; the other members were told OK",
            meeting.parties(),
            meeting.position
        ),
        Ok(Withdrawal::TimedOut) => "too late to withdraw: the wait had already timed out".into(),
        Ok(Withdrawal::Unknown) => "the server knew no wait with this attempt key; a try with \
             it within the server's --attempt-grace is refused"
            .into(),
        Err(status) => format!(
            "could not withdraw the wait ({}: {}); the server keeps its place for its \
             --attempt-grace",
            code_name(status.code()),
            status.message()
        ),
    }
}

/// Runs `rendezvous probe`.
pub async fn probe(args: ProbeArgs) -> Exit {
    let report = Report { json: false };
    let client = match args
        .connection
        .options()
        .and_then(|options| Client::connect_lazily(&options))
    {
        Ok(client) => client,
        Err(error) => return report.client_error(&error),
    };
    match client.check(&args.service, Some(args.timeout)).await {
        Ok(ServingStatus::Serving) => {
            println!("SERVING");
            Exit::Ok
        }
        Ok(status) => {
            println!("{}", status.as_str_name());
            Exit::Unavailable
        }
        Err(status) => report.failed(status.code(), status.message(), Exit::of_status(&status)),
    }
}

fn read_payload(args: &WaitArgs) -> Result<Bytes, String> {
    if let Some(text) = &args.payload {
        return Ok(Bytes::from(text.clone()));
    }
    let Some(path) = &args.payload_file else {
        return Ok(Bytes::new());
    };
    let mut payload = Vec::new();
    let read = match path.to_str() {
        Some("-") => std::io::stdin()
            .lock()
            .read_to_end(&mut payload)
            .map(|_| ()),
        _ => std::fs::read(path).map(|bytes| payload = bytes),
    };
    read.map_err(|e| format!("cannot read --payload-file {}: {e}", path.display()))?;
    Ok(payload.into())
}

/// Writes one line to stderr in one `write`. Stderr is unbuffered, so
/// `eprintln!` writes each piece of its format on its own, and the lines of
/// two waits started from one shell (`wait ... &`) can interleave mid-line.
fn say(line: std::fmt::Arguments) {
    let line = format!("{line}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Where outcomes are written: JSON on stdout, or words on stderr.
struct Report {
    json: bool,
}

impl Report {
    fn failed(&self, code: Code, message: &str, exit: Exit) -> Exit {
        if self.json {
            self.print_json(&JsonError {
                code: code_name(code),
                message: message.into(),
            });
        } else {
            say(format_args!("rendezvous: {}: {message}", code_name(code)));
        }
        exit
    }

    /// A client that could not be set up. Both subcommands connect lazily,
    /// at their call, so this is always about what they were given (an
    /// address, a file); a server that cannot be reached fails the call.
    fn client_error(&self, error: &ClientError) -> Exit {
        self.failed(
            Code::InvalidArgument,
            &error.to_string(),
            Exit::InvalidInput,
        )
    }

    fn print_json(&self, value: &impl serde::Serialize) {
        let mut stdout = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut stdout, value);
        let _ = writeln!(stdout);
    }
}

pub use crate::json::code_name;

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_server_is_the_default_subcommand() {
        for (given, expected) in [
            (&["rendezvous"][..], &["rendezvous", "serve"][..]),
            (
                &["rendezvous", "--grpc-addr=x:1"],
                &["rendezvous", "serve", "--grpc-addr=x:1"],
            ),
            (&["rendezvous", "serve"], &["rendezvous", "serve"]),
            (&["rendezvous", "wait", "id"], &["rendezvous", "wait", "id"]),
            (&["rendezvous", "probe"], &["rendezvous", "probe"]),
            (&["rendezvous", "help"], &["rendezvous", "help"]),
            (&["rendezvous", "--help"], &["rendezvous", "--help"]),
            (&["rendezvous", "-h"], &["rendezvous", "-h"]),
            (&["rendezvous", "-V"], &["rendezvous", "-V"]),
            (&["rendezvous", "--version"], &["rendezvous", "--version"]),
        ] {
            assert_eq!(
                with_default_subcommand(args(given)),
                args(expected),
                "{given:?}"
            );
        }
        assert_eq!(with_default_subcommand(Vec::new()), args(&["serve"]));
    }

    #[test]
    fn statuses_map_to_the_documented_exits() {
        let exit = |code| Exit::of_status(&Status::new(code, "")) as u8;
        assert_eq!(exit(Code::Ok), 0);
        assert_eq!(exit(Code::Internal), 1);
        assert_eq!(exit(Code::Unimplemented), 1);
        assert_eq!(exit(Code::InvalidArgument), 2);
        assert_eq!(exit(Code::NotFound), 2);
        assert_eq!(exit(Code::OutOfRange), 2);
        assert_eq!(exit(Code::DeadlineExceeded), 3);
        assert_eq!(exit(Code::Unavailable), 4);
        assert_eq!(exit(Code::ResourceExhausted), 4);
        assert_eq!(exit(Code::Unauthenticated), 5);
        assert_eq!(exit(Code::PermissionDenied), 5);
    }

    #[test]
    fn every_code_has_its_grpc_name() {
        for number in 0..=16 {
            let code = Code::from_i32(number);
            let name = code_name(code);
            let expected = format!("{code:?}")
                .chars()
                .flat_map(|c| match c.is_uppercase() {
                    true => vec!['_', c],
                    false => vec![c.to_ascii_uppercase()],
                })
                .skip(1)
                .collect::<String>();
            assert_eq!(name, expected);
        }
    }

    /// Each thing a withdrawal can find, as `wait` says it on stderr.
    #[test]
    fn what_a_withdrawal_found_is_said_plainly() {
        use crate::pairing::{Meeting, Offer, Offers};
        let pair = |position| {
            Withdrawal::Met(Meeting::new(
                position,
                Offers::Peer(Offer::default()),
                Duration::ZERO,
            ))
        };
        let group = Withdrawal::Met(Meeting::new(
            2,
            Offers::All(vec![Offer::default(); 4].into()),
            Duration::ZERO,
        ));
        for (found, said) in [
            (
                Ok(Withdrawal::Withdrawn),
                "withdrew the wait: nobody will be paired with it",
            ),
            (
                Ok(pair(0)),
                "too late to withdraw: the wait had already paired, as the first party; its \
                 partner was told OK",
            ),
            (
                Ok(pair(1)),
                "too late to withdraw: the wait had already paired, as the second party; its \
                 partner was told OK",
            ),
            (
                Ok(group),
                "too late to withdraw: the wait had already completed its group of 4 at \
                 position 2; the other members were told OK",
            ),
            (
                Ok(Withdrawal::TimedOut),
                "too late to withdraw: the wait had already timed out",
            ),
            (
                Ok(Withdrawal::Unknown),
                "the server knew no wait with this attempt key; a try with it within the \
                 server's --attempt-grace is refused",
            ),
            (
                Err(Status::unavailable("cannot reach it")),
                "could not withdraw the wait (UNAVAILABLE: cannot reach it); the server keeps \
                 its place for its --attempt-grace",
            ),
        ] {
            assert_eq!(withdrawal_found(found), said);
        }
    }

    #[test]
    fn retry_needs_a_timeout_and_payloads_are_one_or_the_other() {
        assert!(Cli::try_parse_from(["rendezvous", "wait", "id", "--retry"]).is_err());
        assert!(
            Cli::try_parse_from(["rendezvous", "wait", "id", "--retry", "--timeout=1s"]).is_ok()
        );
        assert!(
            Cli::try_parse_from([
                "rendezvous",
                "wait",
                "id",
                "--payload=a",
                "--payload-file=b"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["rendezvous", "wait", "id", "--client-cert=c"]).is_err());
        assert!(Cli::try_parse_from(["rendezvous", "wait", "id", "--timeout=0s"]).is_err());
        assert!(Cli::try_parse_from(["rendezvous", "wait"]).is_err());
    }
}

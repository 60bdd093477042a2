//! The binary as users run it: a process of its own, its log read as it
//! goes, and signals sent to it.

use super::*;

/// The binary, started as users start it, with its addresses read from its
/// own startup log line.
pub struct Process {
    pub child: Child,
    /// The log, parsed, line by line. A task drains the pipe all the time:
    /// a server whose stderr fills up blocks on its next log line.
    events: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    /// Lines read before "listening" (which [`Process::next`] looks at
    /// first): the engine may log before the server does.
    early: std::collections::VecDeque<serde_json::Value>,
    pub grpc: String,
    pub http: String,
    /// The startup line, with every setting in force: the server's, and the
    /// engine's merged in (see [`settings`]).
    pub listening: serde_json::Value,
}

/// Collects the fields of the engine's startup line, if `event` is it: the
/// settings a server logs come in two lines, its own and its engine's.
pub fn settings(
    event: &serde_json::Value,
    engine: &mut serde_json::Map<String, serde_json::Value>,
) {
    if event["fields"]["message"] == "meeting through Redis" {
        for (name, value) in event["fields"].as_object().unwrap() {
            if name != "message" {
                engine.insert(name.clone(), value.clone());
            }
        }
    }
}

impl Process {
    /// Starts the binary on port 0 with `args`, and the defaults here for
    /// any flag `args` does not set.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[]).await
    }

    /// [`Process::start`], with more environment variables.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let defaults = [
            "--grpc-addr=127.0.0.1:0",
            "--http-addr=127.0.0.1:0",
            "--log-format=json",
            "--shutdown-grace=1s",
            "--default-wait=30s",
            "--max-wait=30s",
        ];
        let unset = defaults.into_iter().filter(|default| {
            let flag = default.split('=').next().unwrap();
            !args.iter().any(|arg| arg.split('=').next() == Some(flag))
        });
        let mut child = Command::new(env!("CARGO_BIN_EXE_rendezvous"))
            .args(unset)
            .args(args)
            .env("RUST_LOG", "info,rendezvous::service=debug")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (sender, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = sender.send(serde_json::from_str(&line).unwrap());
            }
        });
        let mut process = Self {
            child,
            events,
            early: std::collections::VecDeque::new(),
            grpc: String::new(),
            http: String::new(),
            listening: serde_json::Value::Null,
        };
        let listening = process.settings().await;
        let field = |name: &str| listening["fields"][name].as_str().unwrap().to_owned();
        (process.grpc, process.http) = (field("grpc"), field("http"));
        process.listening = listening;
        process
    }

    /// Waits until `/readyz` answers `status` (200: ready; 503: not).
    pub async fn until_ready(&self, status: u16) {
        let readyz = format!("http://{}/readyz", self.http);
        let http = http_client();
        for _ in 0..1000 {
            if let Ok(response) = http.get(&readyz).send().await
                && response.status() == status
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("/readyz never answered {status}");
    }

    /// Every log line the process has written so far and not yet read.
    pub fn drain_log(&mut self) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| self.events.try_recv().ok()).collect()
    }

    /// Waits for the next log line with this message.
    /// The "listening" line, with the fields of the engine's own startup
    /// line ("meeting through Redis") merged in.
    async fn settings(&mut self) -> serde_json::Value {
        within(async {
            let mut engine = serde_json::Map::new();
            loop {
                let event = self.events.recv().await.expect("the server starts");
                settings(&event, &mut engine);
                self.early.push_back(event.clone());
                if event["fields"]["message"] == "listening" {
                    let mut event = event;
                    let fields = event["fields"].as_object_mut().unwrap();
                    fields.extend(engine);
                    return event;
                }
            }
        })
        .await
    }

    /// The next log line whose message is `message`, skipping others.
    pub async fn next(&mut self, message: &str) -> serde_json::Value {
        while let Some(event) = self.early.pop_front() {
            if event["fields"]["message"] == message {
                return event;
            }
        }
        within(async {
            loop {
                let event = self
                    .events
                    .recv()
                    .await
                    .expect("the server is still running");
                if event["fields"]["message"] == message {
                    return event;
                }
            }
        })
        .await
    }

    /// The crate's own client, connected to the process.
    pub async fn client(&self) -> Client {
        Client::connect(&ClientOptions::new(&self.grpc).unwrap())
            .await
            .expect("connects to the process")
    }

    /// A gRPC connection to the process.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Sends a signal by name, as `kill -s NAME` would.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-s", name, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

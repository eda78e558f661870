//! The `secretd-chat` binary end to end against a real server: init, create, invite,
//! accept, send, read, chat, a second device by login and a wrong password refused (here);
//! rooms left or lost to a removal ([`lost_rooms`]); tokens checked, renewed and run out
//! ([`tokens`]); lines typed while the server is down ([`outbox`]).

mod lost_rooms;
mod outbox;
mod safety;
mod tls;
mod tokens;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::chat::marker;
use crate::common::{Backend, Server, fresh_user, token};

/// `secretd-chat --state STATE --json ARGS` with the password given by the environment.
pub(crate) fn chat(state: &Path, password: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_secretd-chat"));
    cmd.arg("--state").arg(state).arg("--json").args(args);
    cmd.env("SECRETD_CHAT_PASSWORD", password)
        .env_remove("SECRETD_CHAT_TOKEN");
    cmd
}

/// Runs a command to completion off the async runtime.
pub(crate) async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("secretd-chat runs"))
        .await
        .unwrap()
}

/// Runs a command that must succeed; its JSON lines.
pub(crate) async fn ok(cmd: Command) -> Vec<Value> {
    let out = run(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "secretd-chat failed: {}\nstdout: {stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// Runs a command that must fail with exit code 1; its stderr.
pub(crate) async fn fails(cmd: Command) -> String {
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub(crate) fn texts(lines: &[Value]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|l| l["kind"] == "text")
        .map(|l| {
            (
                l["sender"].as_str().unwrap().to_string(),
                l["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `init` of a new user's device in `dir`; the user id and token.
pub(crate) async fn new_device(server: &Server, dir: &Path, password: &str) -> (u64, String) {
    let user = fresh_user();
    let tok = token(user);
    ok(chat(
        dir,
        password,
        &["init", "--server", &server.url(), "--token", &tok],
    ))
    .await;
    (user, tok)
}

/// Alice and Bob, each with a device under a home directory, in a room "room" that Alice
/// created and Bob joined.
pub(crate) struct Pair {
    pub a_dir: PathBuf,
    pub b_dir: PathBuf,
    pub alice: u64,
    pub bob: u64,
}

impl Pair {
    pub(crate) async fn in_a_room(server: &Server, home: &Path) -> Pair {
        let (a_dir, b_dir) = (home.join("alice"), home.join("bob"));
        let (alice, _) = new_device(server, &a_dir, "pa").await;
        let (bob, _) = new_device(server, &b_dir, "pb").await;
        ok(chat(&a_dir, "pa", &["create", "room"])).await;
        ok(chat(&a_dir, "pa", &["invite", "room", &bob.to_string()])).await;
        ok(chat(&b_dir, "pb", &["accept"])).await;
        Pair {
            a_dir,
            b_dir,
            alice,
            bob,
        }
    }
}

/// A running `chat` or `listen`: its stdin, the JSON lines it prints as they come, and
/// its stderr (in a file), shown when a wait fails.
pub(crate) struct Live {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
    printed: Arc<Mutex<Vec<String>>>,
    stderr: PathBuf,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Live {
    /// Starts `cmd`, its stderr going to `stderr`.
    pub(crate) fn spawn(mut cmd: Command, stderr: PathBuf) -> Live {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel::<Value>();
        let out = BufReader::new(child.stdout.take().unwrap());
        let printed = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = std::thread::spawn({
            let printed = printed.clone();
            move || {
                for line in out.lines() {
                    let line = line.unwrap();
                    printed.lock().unwrap().push(line.clone());
                    let v: Value = serde_json::from_str(&line).unwrap();
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        Live {
            child,
            stdin,
            lines,
            printed,
            stderr,
            reader: Some(reader),
        }
    }

    /// Types a line.
    pub(crate) fn type_line(&mut self, text: &str) {
        writeln!(self.stdin.as_mut().expect("stdin open"), "{text}").unwrap();
    }

    /// What it printed on stderr so far, and on stdout.
    pub(crate) fn log(&self) -> String {
        format!(
            "its stderr:\n{}\nits stdout:\n{}",
            std::fs::read_to_string(&self.stderr).unwrap_or_default(),
            self.printed.lock().unwrap().join("\n")
        )
    }

    /// The next printed line that `want` accepts (others are skipped), within a minute.
    pub(crate) async fn next_where(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(v)) if want(&v) => return v,
                Ok(Some(_)) => {}
                Ok(None) => panic!("it stopped printing; {}", self.log()),
                Err(_) => panic!("nothing expected within a minute; {}", self.log()),
            }
        }
    }

    /// The next chat message printed: (sender, text).
    pub(crate) async fn next_text(&mut self) -> (String, String) {
        let v = self.next_where(|v| v["kind"] == "text").await;
        (
            v["sender"].as_str().unwrap().to_string(),
            v["text"].as_str().unwrap().to_string(),
        )
    }

    /// Stops it (as Ctrl-C would).
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Ends its input and waits for it to exit (within a minute).
    pub(crate) async fn finish(mut self) -> (ExitStatus, String) {
        drop(self.stdin.take());
        let mut child = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap());
        let status = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || child.wait().unwrap()),
        )
        .await
        .expect("it exits within a minute")
        .unwrap();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        (status, self.log())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_terminals_chat() {
    let server = Server::start(Backend::Sqlite).await;
    let home = tempfile::tempdir().unwrap();
    let (a_dir, b_dir, b2_dir) = (
        home.path().join("alice"),
        home.path().join("bob"),
        home.path().join("bob2"),
    );
    let (alice, bob) = (fresh_user(), fresh_user());
    let (a_tok, b_tok) = (token(alice), token(bob));
    let url = server.url();
    let secret = marker();

    let me = ok(chat(
        &a_dir,
        "pa",
        &["init", "--server", &url, "--token", &a_tok],
    ))
    .await;
    assert_eq!(me[0]["user"], alice.to_string());
    assert_eq!(me[0]["fingerprint"].as_str().unwrap().len(), 64);
    ok(chat(
        &b_dir,
        "pb",
        &["init", "--server", &url, "--token", &b_tok],
    ))
    .await;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&a_dir), 0o700);
    assert_eq!(mode(&a_dir.join("state.json")), 0o600);

    let created = ok(chat(&a_dir, "pa", &["create", "general"])).await;
    let pair = created[0]["room"].as_str().unwrap().to_string();
    // Her own room's keys (the self-invite) are not announced as an invite to her.
    assert!(ok(chat(&a_dir, "pa", &["accept"])).await.is_empty());
    // A human's view (no --json) says so.
    let mut plain = std::process::Command::new(env!("CARGO_BIN_EXE_secretd-chat"));
    plain.arg("--state").arg(&a_dir).arg("accept");
    let said = run(plain).await;
    assert_eq!(String::from_utf8_lossy(&said.stdout), "no new invites\n");
    ok(chat(
        &a_dir,
        "pa",
        &[
            "invite",
            "general",
            &bob.to_string(),
            "--history",
            "from-now",
        ],
    ))
    .await;
    let joined = ok(chat(&b_dir, "pb", &["accept"])).await;
    assert_eq!(joined[0]["room"], pair.as_str());
    assert_eq!(joined[0]["accepted"], true);

    // What arrives while no chat runs is shown when one starts. (The chat's catch-up at
    // start used to process such events without printing them: this test then failed
    // whenever Alice's first message below landed before Bob's chat had started.)
    ok(chat(
        &a_dir,
        "pa",
        &["send", "general", &format!("while you were away {secret}")],
    ))
    .await;
    // Bob chats in a second "terminal" while Alice sends from hers.
    let mut bob_chat = Live::spawn(
        chat(&b_dir, "pb", &["chat", "general"]),
        b_dir.join("chat.stderr"),
    );
    assert_eq!(
        bob_chat.next_text().await,
        (alice.to_string(), format!("while you were away {secret}"))
    );
    ok(chat(
        &a_dir,
        "pa",
        &["send", "general", &format!("hello bob {secret}")],
    ))
    .await;
    assert_eq!(
        bob_chat.next_text().await,
        (alice.to_string(), format!("hello bob {secret}"))
    );
    bob_chat.type_line(&format!("hi alice {secret}"));
    assert_eq!(
        bob_chat.next_text().await,
        (bob.to_string(), format!("hi alice {secret}"))
    );
    let (status, log) = bob_chat.finish().await; // end of input ends the chat
    assert!(status.success(), "{log}");

    ok(chat(
        &b_dir,
        "pb",
        &["send", &pair, &format!("bye {secret}")],
    ))
    .await;
    let both = vec![
        (alice.to_string(), format!("while you were away {secret}")),
        (alice.to_string(), format!("hello bob {secret}")),
        (bob.to_string(), format!("hi alice {secret}")),
        (bob.to_string(), format!("bye {secret}")),
    ];
    assert_eq!(
        texts(&ok(chat(&a_dir, "pa", &["read", "general"])).await),
        both
    );
    assert_eq!(
        texts(&ok(chat(&b_dir, "pb", &["read", "general"])).await),
        both
    );

    // A second device of Bob's: the wrong password is refused cleanly, the right one
    // restores the room.
    let wrong = run(chat(
        &b2_dir,
        "not it",
        &["login", "--server", &url, "--token", &b_tok],
    ))
    .await;
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("wrong password"),
        "{wrong:?}"
    );
    assert!(
        !b2_dir.join("state.json").exists(),
        "nothing saved after a failed login"
    );
    ok(chat(
        &b2_dir,
        "pb",
        &["login", "--server", &url, "--token", &b_tok],
    ))
    .await;
    assert_eq!(
        texts(&ok(chat(&b2_dir, "pb", &["read", "general"])).await),
        both
    );
    let rooms = ok(chat(&b2_dir, "pb", &["rooms"])).await;
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0]["name"], "general");

    // A server that is not there is named, with what to check.
    let nowhere = fails(chat(
        &home.path().join("nowhere"),
        "pn",
        &["init", "--server", "http://127.0.0.1:1", "--token", &a_tok],
    ))
    .await;
    assert!(
        nowhere.contains(
            "error: cannot reach the server at http://127.0.0.1:1: nothing listens there \
             (connection refused): is secretd running at that address?"
        ),
        "{nowhere}"
    );
    assert!(nowhere.contains("hint: check --server"), "{nowhere}");

    // An unknown room is a clear error, not a crash.
    let missing = run(chat(&a_dir, "pa", &["send", "nowhere", "x"])).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no room named"),
        "{missing:?}"
    );
    server.stop().await;
}

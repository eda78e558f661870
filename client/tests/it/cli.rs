//! The `secretd-chat` binary end to end: init, create, invite, accept, send, read, chat,
//! a second device by login, and a wrong password refused — against a real server.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::chat::marker;
use crate::common::{Backend, Server, fresh_user, token};

fn chat(state: &Path, password: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_secretd-chat"));
    cmd.arg("--state").arg(state).arg("--json").args(args);
    cmd.env("SECRETD_CHAT_PASSWORD", password)
        .env_remove("SECRETD_CHAT_TOKEN");
    cmd
}

/// Runs a command to completion off the async runtime.
async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("secretd-chat runs"))
        .await
        .unwrap()
}

/// Runs a command that must succeed; its JSON lines.
async fn ok(cmd: Command) -> Vec<Value> {
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

fn texts(lines: &[Value]) -> Vec<(String, String)> {
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

    // Bob chats in a second "terminal" while Alice sends from hers.
    // Bob's chat writes its diagnostics to a file, shown if the test fails.
    let chat_log = b_dir.join("chat.stderr");
    let mut bob_chat = chat(&b_dir, "pb", &["chat", "general"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&chat_log).unwrap())
        .spawn()
        .unwrap();
    let mut typed = bob_chat.stdin.take().unwrap();
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let lines = BufReader::new(bob_chat.stdout.take().unwrap());
    // Everything the chat prints, shown with its stderr if the test fails (a rejected
    // event is a line of its own kind, not a "text").
    let printed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = std::thread::spawn({
        let printed = printed.clone();
        move || {
            for line in lines.lines() {
                let line = line.unwrap();
                printed.lock().unwrap().push(line.clone());
                let v: Value = serde_json::from_str(&line).unwrap();
                if v["kind"] == "text" && tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    let mut next_text = async || {
        let log = || {
            format!(
                "{}\nits stdout:\n{}",
                std::fs::read_to_string(&chat_log).unwrap_or_default(),
                printed.lock().unwrap().join("\n")
            )
        };
        let v = tokio::time::timeout(std::time::Duration::from_secs(60), heard.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "chat printed no message within a minute; its stderr:\n{}",
                    log()
                )
            })
            .unwrap_or_else(|| panic!("chat stopped printing; its stderr:\n{}", log()));
        (
            v["sender"].as_str().unwrap().to_string(),
            v["text"].as_str().unwrap().to_string(),
        )
    };
    ok(chat(
        &a_dir,
        "pa",
        &["send", "general", &format!("hello bob {secret}")],
    ))
    .await;
    assert_eq!(
        next_text().await,
        (alice.to_string(), format!("hello bob {secret}"))
    );
    writeln!(typed, "hi alice {secret}").unwrap();
    assert_eq!(
        next_text().await,
        (bob.to_string(), format!("hi alice {secret}"))
    );
    drop(typed); // end of input ends the chat
    assert!(bob_chat.wait().unwrap().success());
    reader.join().unwrap();

    ok(chat(
        &b_dir,
        "pb",
        &["send", &pair, &format!("bye {secret}")],
    ))
    .await;
    let both = vec![
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

    // An unknown room is a clear error, not a crash.
    let missing = run(chat(&a_dir, "pa", &["send", "nowhere", "x"])).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no room named"),
        "{missing:?}"
    );
    server.stop().await;
}

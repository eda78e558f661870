//! Self-resuming subscriptions: a connection cut by a proxy between client and server,
//! events and an invite sent while the client cannot connect, and every event and invite
//! delivered exactly once, in order, after it reconnects.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secretd_client::api::Api;
use secretd_client::api::subscription::{Delivery, Subscription};
use secretd_client::device::History;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::common::{Backend, Server, token};

/// A TCP proxy that can drop every connection and refuse new ones until reopened.
struct Proxy {
    addr: std::net::SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped at once: the client sees the connection fail
                }
                c.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Proxy {
            addr,
            open,
            conns,
            accept,
        }
    }

    /// Drops every connection and refuses new ones.
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// The next delivery that is not a reconnect notice (bounded wait so a bug fails, not hangs).
async fn next(sub: &mut Subscription, reconnects: &mut usize) -> Delivery {
    loop {
        let d = tokio::time::timeout(Duration::from_secs(60), sub.next())
            .await
            .expect("a delivery within a minute")
            .expect("the subscription runs");
        match d {
            Delivery::Reconnecting { .. } => *reconnects += 1,
            Delivery::CaughtUp { .. } => {}
            other => return other,
        }
    }
}

fn event_id(d: &Delivery) -> u64 {
    match d {
        Delivery::Event(m) => m.event_id,
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn resumes_exactly_once_across_a_cut(backend: Backend) {
    let server = Server::start(backend).await;
    let (_, mut alice) = server.new_user("pw a").await;
    let (bob_id, _bob) = server.new_user("pw b").await;
    let room = alice.create_room("live", vec![], "").await.unwrap();
    let bob_ref = secretd_client::user::local(bob_id);
    alice
        .invite(&room, &bob_ref, History::All, false)
        .await
        .unwrap();
    let stream = alice.room(&room).unwrap().message.stream_id.clone();

    let proxy = Proxy::start(server.addr).await;
    let via_proxy = Api::connect(&format!("http://{}", proxy.addr), &token(bob_id))
        .await
        .unwrap();
    let mut sub = via_proxy.subscribe(vec![(stream.clone(), 0)], Some(0));
    let mut reconnects = 0;
    match next(&mut sub, &mut reconnects).await {
        Delivery::Invite(i) => assert_eq!(i.invite_id, 1),
        other => panic!("expected the first invite, got {other:?}"),
    }
    for i in 1..=3 {
        alice.send_text(&room, &format!("m{i}")).await.unwrap();
    }
    for want in 1..=3 {
        assert_eq!(event_id(&next(&mut sub, &mut reconnects).await), want);
    }

    proxy.cut();
    for i in 4..=6 {
        alice.send_text(&room, &format!("m{i}")).await.unwrap();
    }
    alice
        .invite(&room, &bob_ref, History::FromNow, false)
        .await
        .unwrap();
    proxy.reopen();

    // The invite sent while away arrives once; the missed events follow in order.
    let mut got = Vec::new();
    let mut invites = Vec::new();
    while got.len() < 3 {
        match next(&mut sub, &mut reconnects).await {
            Delivery::Event(m) => got.push(m.event_id),
            Delivery::Invite(i) => invites.push(i.invite_id),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, [4, 5, 6]);
    alice.send_text(&room, "m7").await.unwrap();
    loop {
        match next(&mut sub, &mut reconnects).await {
            Delivery::Event(m) => {
                assert_eq!(m.event_id, 7, "nothing repeated, nothing skipped");
                break;
            }
            Delivery::Invite(i) => invites.push(i.invite_id),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(invites, [2]);
    assert!(reconnects >= 1, "the cut was not noticed");
    drop(sub);
    server.stop().await;
}

crate::on_both_stores!(resumes_exactly_once_across_a_cut);

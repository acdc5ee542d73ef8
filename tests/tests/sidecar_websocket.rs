//! HTTP `Upgrade` through the mesh: a real WebSocket client, through the
//! caller's sidecar, reaches a real WebSocket echo app behind the callee's
//! sidecar — the handshake completes (101, the app's `Sec-WebSocket-Accept`
//! for the client's key, the negotiated subprotocol), messages go both
//! ways, large ones too, and the close handshake ends the stream on every
//! leg. The upgrade request is authorized like any request: a path or a
//! caller the AllowList does not name gets a 403 before the app sees
//! anything, and a non-GET upgrade is authorized by its own method.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bulkhead_tests::control::wait_for_async;
use bulkhead_tests::mesh::Mesh;
use bulkhead_tests::proxy::*;
use bulkhead_tests::security::WAIT;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const MESH: &str = "
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: chat, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: chat, namespace: shop}
spec:
  target: chat
  rules:
  - from: [web]
    http: {methods: [GET], paths: ['/ws/**']}
  - from: [web]
    http: {methods: [POST], paths: ['/exec']}
";

/// A WebSocket echo app: it counts every handshake request that reaches it
/// (the sidecar's readiness probe, a bare TCP connect, is not one), refuses
/// `/ws/missing` with a 404, agrees to the `chat` subprotocol, greets with
/// `hello <method> <path> mesh-headers=<n>` (how many `x-bulkhead-*`
/// headers but the caller's identity reached it), then echoes every text
/// and binary message.
async fn echo_app() -> App {
    App::serve(|tcp, count| async move {
        let mut greeting = String::new();
        #[allow(
            clippy::result_large_err,
            reason = "tungstenite's accept callback fixes this signature"
        )]
        let handshake = |req: &http::Request<()>, mut resp: http::Response<()>| {
            count.fetch_add(1, Ordering::SeqCst);
            if req.uri().path() == "/ws/missing" {
                let mut refused = http::Response::new(Some("no such room".to_owned()));
                *refused.status_mut() = StatusCode::NOT_FOUND;
                return Err(refused);
            }
            // The caller's identity is told to every app on purpose; any
            // other mesh header is the mesh's own business.
            let mesh_headers = req
                .headers()
                .keys()
                .filter(|k| {
                    k.as_str().starts_with("x-bulkhead-")
                        && k.as_str() != "x-bulkhead-peer-identity"
                })
                .count();
            greeting = format!(
                "hello {} {} mesh-headers={mesh_headers}",
                req.method(),
                req.uri()
            );
            if req
                .headers()
                .get("sec-websocket-protocol")
                .is_some_and(|p| p.as_bytes().starts_with(b"chat"))
            {
                resp.headers_mut()
                    .insert("sec-websocket-protocol", "chat".parse().unwrap());
            }
            Ok(resp)
        };
        let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, handshake).await else {
            return;
        };
        if ws.send(Message::text(greeting)).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// Opens a WebSocket to `path` through `addr` (a sidecar's upstream),
/// offering the `chat` subprotocol; the key it sent, the stream and the
/// handshake's answer.
async fn open(
    addr: SocketAddr,
    path: &str,
) -> Result<
    (
        String,
        WebSocketStream<TcpStream>,
        Response<Option<Vec<u8>>>,
    ),
    WsError,
> {
    let mut req = format!("ws://chat{path}").into_client_request()?;
    req.headers_mut()
        .insert("sec-websocket-protocol", "chat, superchat".parse().unwrap());
    let key = req.headers()["sec-websocket-key"]
        .to_str()
        .unwrap()
        .to_owned();
    let tcp = TcpStream::connect(addr).await?;
    let (ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .map_err(|_| WsError::Io(std::io::ErrorKind::TimedOut.into()))??;
    Ok((key, ws, resp))
}

/// [`open`], retried until the caller's sidecar knows chat's endpoints.
async fn open_when_routable(
    addr: SocketAddr,
    path: &str,
) -> (
    String,
    WebSocketStream<TcpStream>,
    Response<Option<Vec<u8>>>,
) {
    wait_for_async(&format!("a WebSocket to chat{path}"), WAIT, || async {
        open(addr, path).await.ok()
    })
    .await
}

/// The HTTP answer a refused handshake got, once the caller's sidecar
/// knows chat's endpoints (until then it answers 503 itself).
async fn refused(addr: SocketAddr, path: &str) -> Response<Option<Vec<u8>>> {
    wait_for_async(&format!("chat to answer {path}"), WAIT, || async {
        match open(addr, path).await {
            Err(WsError::Http(resp)) if resp.status() != StatusCode::SERVICE_UNAVAILABLE => {
                Some(*resp)
            }
            Err(WsError::Http(_)) => None,
            Err(other) => panic!("{path}: expected an HTTP refusal, got {other}"),
            Ok(_) => panic!("{path}: the upgrade was accepted"),
        }
    })
    .await
}

/// The next message, in bounded time.
async fn next(ws: &mut WebSocketStream<TcpStream>) -> Option<Message> {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a message in time")
        .map(|m| m.expect("a well-formed message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echoes_both_ways_through_two_sidecars() {
    let mesh = Mesh::memory("cluster.local", MESH, &[]).await;
    let app = echo_app().await;
    let chat = mesh.sidecar(SidecarSpec::new("shop", "chat", "1.0.0").app(&app));
    let web = mesh.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("chat"));

    let (key, mut ws, resp) = open_when_routable(web.upstream("chat"), "/ws/echo?room=1").await;
    // The handshake the app made, end to end: 101, the accept for this
    // client's key, the subprotocol the app chose.
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        resp.headers()["sec-websocket-accept"],
        derive_accept_key(key.as_bytes()).as_str()
    );
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    assert!(
        resp.headers()["upgrade"]
            .as_bytes()
            .eq_ignore_ascii_case(b"websocket")
    );
    // The app speaks first: it saw a GET for the path asked, and none of
    // the mesh's own headers.
    assert_eq!(
        next(&mut ws)
            .await
            .map(|m| m.into_text().unwrap().to_string()),
        Some("hello GET /ws/echo?room=1 mesh-headers=0".to_owned())
    );

    for i in 0..5 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.expect("send");
        assert_eq!(next(&mut ws).await, Some(Message::text(text)));
    }
    // Larger than any buffer on the way (16 KiB) and than a TLS record.
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.expect("send");
    assert_eq!(next(&mut ws).await, Some(Message::binary(big)));

    // The close handshake crosses both sidecars, and the stream ends.
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .expect("close");
    match next(&mut ws).await {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected the app's close, got {other:?}"),
    }
    assert!(next(&mut ws).await.is_none(), "the stream did not end");
    // The client closes its connection last, as RFC 6455 has it.
    drop(ws);
    assert_eq!(app.seen(), 1, "one handshake reached the app");

    // Both sidecars counted the stream, once it ended on every leg.
    for (sidecar, direction) in [(&web, "outbound"), (&chat, "inbound")] {
        wait_for_async(
            &format!("{direction} upgraded stream counted"),
            WAIT,
            || async {
                let labels = [("direction", direction), ("service", "chat")];
                (sidecar.metric("bulkhead_upgraded_streams_total", &labels) >= 1.0).then_some(())
            },
        )
        .await;
        let clean = [("direction", direction), ("result", "ok")];
        assert_eq!(
            sidecar.metric("bulkhead_upgraded_streams_total", &clean),
            1.0,
            "{}",
            sidecar.metrics()
        );
    }
    let switched = [("direction", "outbound"), ("status_class", "1xx")];
    assert_eq!(web.metric("bulkhead_requests_total", &switched), 1.0);

    // An app that answers the upgrade without switching: its answer comes
    // back at once, and nothing is left waiting for a stream.
    let resp = refused(web.upstream("chat"), "/ws/missing").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.seen(), 2);
}

/// After the switch a WebSocket is opaque bytes, held to the opaque TCP
/// rule: no data either way for `--tcp-idle-timeout` closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_is_closed_like_an_idle_tcp_stream() {
    let mesh = Mesh::memory("cluster.local", MESH, &[]).await;
    let app = echo_app().await;
    let _chat = mesh.sidecar(SidecarSpec::new("shop", "chat", "1.0.0").app(&app));
    let web = mesh.sidecar(
        SidecarSpec::new("shop", "web", "1.0.0")
            .upstream("chat")
            .arg("--tcp-idle-timeout")
            .arg("1s"),
    );
    let (_, mut ws, _) = open_when_routable(web.upstream("chat"), "/ws/echo").await;
    assert!(next(&mut ws).await.is_some_and(|m| m.is_text()), "greeting");
    // Nothing more is sent: the sidecar ends the stream (the client sees
    // the connection go without a close frame).
    let ended = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the idle stream ends in time");
    assert!(!matches!(ended, Some(Ok(_))), "{ended:?}");
    let idled = [("direction", "outbound"), ("result", "idle-timeout")];
    wait_for_async("the idle stream counted", WAIT, || async {
        (web.metric("bulkhead_upgraded_streams_total", &idled) == 1.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_the_allow_list_does_not_allow_never_reaches_the_app() {
    let mesh = Mesh::memory("cluster.local", MESH, &[]).await;
    let app = echo_app().await;
    let chat = mesh.sidecar(SidecarSpec::new("shop", "chat", "1.0.0").app(&app));
    let web = mesh.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("chat"));
    let intruder = mesh.sidecar(SidecarSpec::new("shop", "intruder", "1.0.0").upstream("chat"));

    // A path no rule names, from an allowed caller.
    let resp = refused(web.upstream("chat"), "/admin/ws").await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.headers().contains_key("x-bulkhead-denied"));
    // The path the rule names, from a caller no rule names.
    let resp = refused(intruder.upstream("chat"), "/ws/echo").await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    assert_eq!(app.seen(), 0, "a denied upgrade reached the app");
    let denied = [("direction", "inbound"), ("target", "chat")];
    assert!(chat.metric("bulkhead_authz_denied_total", &denied) >= 2.0);
    assert_eq!(chat.metric("bulkhead_upgraded_streams_total", &[]), 0.0);
}

/// An app that switches any upgrade request to a byte echo, naming in
/// `x-app-saw` the method and path it was asked with.
async fn byte_echo_app() -> App {
    App::serve(|tcp, count| async move {
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            count.fetch_add(1, Ordering::SeqCst);
            let saw = format!("{} {}", req.method(), req.uri());
            let switched = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(stream) = switched.await {
                    let mut stream = TokioIo::new(stream);
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            async move {
                let resp = Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header("connection", "upgrade")
                    .header("upgrade", "tcp")
                    .header("x-app-saw", saw)
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades()
            .await;
    })
    .await
}

/// Sends a raw HTTP/1.1 upgrade request; the response head (lower case),
/// and the connection for what follows.
async fn try_raw_upgrade(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> Result<(String, TcpStream), String> {
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    );
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut byte)).await;
        match read {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => return Err(format!("no head: {:?}", String::from_utf8_lossy(&head))),
        }
    }
    Ok((String::from_utf8_lossy(&head).to_lowercase(), tcp))
}

async fn raw_upgrade(addr: SocketAddr, method: &str, path: &str) -> (String, TcpStream) {
    try_raw_upgrade(addr, method, path)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_upgrade_is_carried_and_authorized_by_its_own_method() {
    let mesh = Mesh::memory("cluster.local", MESH, &[]).await;
    let app = byte_echo_app().await;
    let _chat = mesh.sidecar(SidecarSpec::new("shop", "chat", "1.0.0").app(&app));
    let web = mesh.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("chat"));
    until_routable_upgrade(&web).await;

    // POST /exec is allowed: the app sees the POST, and bytes echo.
    let (head, mut tcp) = raw_upgrade(web.upstream("chat"), "POST", "/exec").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: tcp\r\n"), "{head}");
    assert!(head.contains("x-app-saw: post /exec\r\n"), "{head}");
    tcp.write_all(b"ping over an upgraded stream")
        .await
        .expect("write");
    let mut echoed = [0u8; 28];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echoed, b"ping over an upgraded stream");
    let seen = app.seen();

    // The same path as a GET upgrade, and /ws/ as a POST upgrade: each
    // rule allows one method only, so both are denied before the app.
    for (method, path) in [("GET", "/exec"), ("POST", "/ws/echo")] {
        let (head, _) = raw_upgrade(web.upstream("chat"), method, path).await;
        assert!(head.starts_with("http/1.1 403"), "{method} {path}: {head}");
    }
    assert_eq!(app.seen(), seen);
}

/// Waits until web's sidecar routes to chat (the first requests may find no
/// endpoint yet) with an upgrade that is then dropped.
async fn until_routable_upgrade(web: &Sidecar) {
    wait_for_async("chat to be routable from web", WAIT, || async {
        let (head, _) = try_raw_upgrade(web.upstream("chat"), "POST", "/exec")
            .await
            .ok()?;
        head.starts_with("http/1.1 101").then_some(())
    })
    .await;
}

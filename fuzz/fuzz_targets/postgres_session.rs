//! Fuzzes whole transaction-mode PostgreSQL sessions, structure-aware: typed openings
//! (SSLRequest, CancelRequest, StartupMessage with odd parameters), an authentication
//! exchange against the real client-auth code over an in-memory stream, then two clients'
//! typed messages (simple and extended protocol, COPY, raw bytes) and their servers' typed
//! replies, driven through the pooler's own state (`switchyard::testing::pg_session`).
//!
//! Checked besides "no panic": a startup the codec accepts re-encodes to the same bytes;
//! everything sent to a server or a client is whole messages; a client's statement name
//! maps to one server name, and a server name to one text on every connection; the
//! settings replay holds only `SET`s of parameters the client named; a connection with
//! another client's settings is reset before use and holds the client's settings once
//! readied; a pinned client keeps its connection; a connection goes back only with the
//! client's settings or marked unknown.

#![no_main]

use std::cell::OnceCell;
use std::collections::HashMap;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use switchyard::auth::md5;
use switchyard::auth::scram::{ClientExchange, Credential};
use switchyard::config::{MessageLimits, PostgresAuth};
use switchyard::protocol::postgres::auth::{Users, authenticate_client};
use switchyard::protocol::postgres::classify::{Rules, SessionChange, classify};
use switchyard::protocol::postgres::codec::{
    self, PROTOCOL_3_0, Startup, StartupPacket, encode_cancel, parse_startup, with_length,
};
use switchyard::protocol::postgres::errors::error_response;
use switchyard::protocol::postgres::frames::{self, Frame, FrameReader, Parse};
use switchyard::protocol::postgres::settings::{SessionSettings, UNKNOWN};
use switchyard::protocol::postgres::split::SplitConfig;
use switchyard::testing::pg_session::Sessions;

const CLIENTS: usize = 2;
const PASSWORD: &str = "pw";

#[derive(Arbitrary, Debug)]
struct Input {
    openings: [Vec<Opening>; CLIENTS],
    auth: Option<Auth>,
    split: bool,
    max_prepared: u8,
    actions: Vec<Action>,
}

#[derive(Arbitrary, Debug)]
enum Opening {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: u32,
        key: Vec<u8>,
    },
    Startup {
        minor: bool,
        params: Vec<(Key, Value)>,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Key {
    User,
    Database,
    Options,
    ApplicationName,
    ClientEncoding,
    StandardConformingStrings,
    DateStyle,
    SearchPath,
    Replication,
    PqExtension,
    Odd,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::User => "user",
            Key::Database => "database",
            Key::Options => "options",
            Key::ApplicationName => "application_name",
            Key::ClientEncoding => "client_encoding",
            Key::StandardConformingStrings => "standard_conforming_strings",
            Key::DateStyle => "DateStyle",
            Key::SearchPath => "search_path",
            Key::Replication => "replication",
            Key::PqExtension => "_pq_.protocol_managed_params",
            Key::Odd => "x\"y'z",
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Value {
    App,
    Utf8,
    Sjis,
    Off,
    Quoted,
    Options,
    Raw(String),
}

impl Value {
    fn text(&self) -> &str {
        match self {
            Value::App => "app",
            Value::Utf8 => "UTF8",
            Value::Sjis => "SJIS",
            Value::Off => "off",
            Value::Quoted => "it's a \\ back'slash",
            Value::Options => "-c search_path=a,b -c statement_timeout=5",
            Value::Raw(text) => text,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Auth {
    method: Method,
    known_user: bool,
    replies: Vec<AuthReply>,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Trust,
    Md5,
    Scram,
    Cleartext,
}

#[derive(Arbitrary, Debug)]
enum AuthReply {
    /// The right answer to whatever the server asked.
    Right,
    Password(String),
    SaslInitial {
        mechanism: bool,
        data: Vec<u8>,
    },
    SaslResponse(Vec<u8>),
    Raw(u8, Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Action {
    Client(Who, ClientMsg),
    Server(Who, ServerMsg),
    /// Several client messages in one read.
    Batch(Who, Vec<ClientMsg>),
    Leave(Who),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Who {
    A,
    B,
}

impl Who {
    fn index(self) -> usize {
        match self {
            Who::A => 0,
            Who::B => 1,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum ClientMsg {
    Query(Sql),
    Parse {
        name: Name,
        sql: Sql,
        types: Vec<u32>,
    },
    Bind {
        portal: Name,
        statement: Name,
        params: Vec<Option<Vec<u8>>>,
    },
    Describe {
        portal: bool,
        name: Name,
    },
    Execute {
        portal: Name,
        max_rows: u32,
    },
    Close {
        portal: bool,
        name: Name,
    },
    Sync,
    Flush,
    FunctionCall,
    CopyData(Vec<u8>),
    CopyDone,
    CopyFail(String),
    Terminate,
    Raw(u8, Vec<u8>),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone)]
enum Name {
    Unnamed,
    S1,
    S2,
    Upper,
    Raw(String),
}

impl Name {
    fn text(&self) -> &str {
        match self {
            Name::Unnamed => "",
            Name::S1 => "s1",
            Name::S2 => "s2",
            Name::Upper => "S1",
            Name::Raw(text) => text,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Sql {
    One(Stmt),
    Many(Vec<Stmt>),
    Hinted(Hint, Stmt),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Hint {
    Primary,
    Replica,
    LineReplica,
    Bogus,
}

#[derive(Arbitrary, Debug)]
enum Stmt {
    Set {
        param: Param,
        value: Word,
        local: bool,
    },
    Reset(Param),
    ResetAll,
    DiscardAll,
    DiscardPlans,
    Begin,
    BeginReadOnly,
    Commit,
    Rollback,
    Prepare,
    Deallocate,
    Listen,
    AdvisoryLock,
    SetConfig {
        param: Param,
        value: Word,
        local: bool,
    },
    TempTable,
    SelectOne,
    Update,
    Route(Word),
    SetRole,
    Do,
    Raw(String),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Param {
    SearchPath,
    StatementTimeout,
    ApplicationName,
    TimeZone,
    Custom,
    ClientEncoding,
}

impl Param {
    fn name(self) -> &'static str {
        match self {
            Param::SearchPath => "search_path",
            Param::StatementTimeout => "statement_timeout",
            Param::ApplicationName => "Application_Name",
            Param::TimeZone => "TimeZone",
            Param::Custom => "my.setting",
            Param::ClientEncoding => "client_encoding",
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Word {
    Number,
    Primary,
    Replica,
    Auto,
    Quoted,
    Default,
    Raw(String),
}

impl Word {
    fn text(&self) -> String {
        match self {
            Word::Number => "5".into(),
            Word::Primary => "primary".into(),
            Word::Replica => "replica".into(),
            Word::Auto => "'auto'".into(),
            Word::Quoted => "'a''b'".into(),
            Word::Default => "DEFAULT".into(),
            Word::Raw(text) => text.clone(),
        }
    }
}

impl Stmt {
    fn text(&self) -> String {
        match self {
            Stmt::Set {
                param,
                value,
                local,
            } => {
                let scope = if *local { "LOCAL " } else { "" };
                format!("SET {scope}{} = {}", param.name(), value.text())
            }
            Stmt::Reset(param) => format!("RESET {}", param.name()),
            Stmt::ResetAll => "RESET ALL".into(),
            Stmt::DiscardAll => "DISCARD ALL".into(),
            Stmt::DiscardPlans => "DISCARD PLANS".into(),
            Stmt::Begin => "BEGIN".into(),
            Stmt::BeginReadOnly => "BEGIN READ ONLY".into(),
            Stmt::Commit => "COMMIT".into(),
            Stmt::Rollback => "ROLLBACK".into(),
            Stmt::Prepare => "PREPARE p AS SELECT 1".into(),
            Stmt::Deallocate => "DEALLOCATE p".into(),
            Stmt::Listen => "LISTEN chan".into(),
            Stmt::AdvisoryLock => "SELECT pg_advisory_lock(1)".into(),
            Stmt::SetConfig {
                param,
                value,
                local,
            } => {
                format!(
                    "SELECT set_config('{}', '{}', {local})",
                    param.name(),
                    value.text()
                )
            }
            Stmt::TempTable => "CREATE TEMP TABLE t (x int)".into(),
            Stmt::SelectOne => "SELECT 1".into(),
            Stmt::Update => "UPDATE t SET x = 1".into(),
            Stmt::Route(word) => format!("SET switchyard.route = {}", word.text()),
            Stmt::SetRole => "SET ROLE other".into(),
            Stmt::Do => "DO $$ BEGIN PERFORM 1; END $$".into(),
            Stmt::Raw(text) => text.clone(),
        }
    }
}

impl Sql {
    fn text(&self) -> String {
        match self {
            Sql::One(stmt) => stmt.text(),
            Sql::Many(stmts) => stmts.iter().map(Stmt::text).collect::<Vec<_>>().join("; "),
            Sql::Hinted(hint, stmt) => {
                let hint = match hint {
                    Hint::Primary => "/* switchyard: primary */ ",
                    Hint::Replica => "/* switchyard: replica */ ",
                    Hint::LineReplica => "-- switchyard: replica\n",
                    Hint::Bogus => "/* switchyard: sideways */ ",
                };
                format!("{hint}{}", stmt.text())
            }
            Sql::Raw(text) => text.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum ServerMsg {
    AuthOk,
    AuthMd5([u8; 4]),
    AuthSasl,
    ParameterStatus(Param, Word),
    BackendKeyData(u32, u32),
    Ready(Status),
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    RowDescription,
    DataRow(Vec<u8>),
    CommandComplete(String),
    EmptyQuery,
    PortalSuspended,
    Error { severity: Severity, code: String },
    Notice,
    Notification,
    CopyInResponse,
    Raw(u8, Vec<u8>),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Status {
    Idle,
    InTransaction,
    Failed,
    Other(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Severity {
    Error,
    Fatal,
    Panic,
}

fn cstr(out: &mut Vec<u8>, text: &[u8]) {
    out.extend(text.iter().filter(|&&b| b != 0));
    out.push(0);
}

fn encode_client(msg: &ClientMsg, sent_sql: &mut String) -> Vec<u8> {
    match msg {
        ClientMsg::Query(sql) => {
            let text = sql.text();
            sent_sql.push_str(&text);
            frames::query(&text).0.to_vec()
        }
        ClientMsg::Parse { name, sql, types } => {
            let text = sql.text().replace('\0', "");
            sent_sql.push_str(&text);
            let mut typed = (types.len().min(64) as u16).to_be_bytes().to_vec();
            types
                .iter()
                .take(64)
                .for_each(|t| typed.extend(t.to_be_bytes()));
            let parse = Parse {
                name: b"",
                query: text.as_bytes(),
                types: &typed,
            };
            parse.renamed(&name.text().replace('\0', "")).0.to_vec()
        }
        ClientMsg::Bind {
            portal,
            statement,
            params,
        } => {
            let mut body = Vec::new();
            cstr(&mut body, portal.text().as_bytes());
            cstr(&mut body, statement.text().as_bytes());
            body.extend(0u16.to_be_bytes());
            body.extend((params.len() as u16).to_be_bytes());
            for param in params {
                match param {
                    Some(value) => {
                        body.extend((value.len() as i32).to_be_bytes());
                        body.extend(value);
                    }
                    None => body.extend((-1i32).to_be_bytes()),
                }
            }
            body.extend(0u16.to_be_bytes());
            Frame::new(b'B', &body).0.to_vec()
        }
        ClientMsg::Describe { portal, name } | ClientMsg::Close { portal, name } => {
            let tag = if matches!(msg, ClientMsg::Describe { .. }) {
                b'D'
            } else {
                b'C'
            };
            if *portal {
                let mut body = vec![b'P'];
                cstr(&mut body, name.text().as_bytes());
                Frame::new(tag, &body).0.to_vec()
            } else {
                frames::statement_message(tag, &name.text().replace('\0', ""))
                    .0
                    .to_vec()
            }
        }
        ClientMsg::Execute { portal, max_rows } => {
            let mut body = Vec::new();
            cstr(&mut body, portal.text().as_bytes());
            body.extend(max_rows.to_be_bytes());
            Frame::new(b'E', &body).0.to_vec()
        }
        ClientMsg::Sync => frames::sync().0.to_vec(),
        ClientMsg::Flush => Frame::new(b'H', &[]).0.to_vec(),
        ClientMsg::FunctionCall => Frame::new(b'F', b"\0\0\x04\xd2\0\0\0\0\0\0").0.to_vec(),
        ClientMsg::CopyData(data) => Frame::new(b'd', data).0.to_vec(),
        ClientMsg::CopyDone => Frame::new(b'c', &[]).0.to_vec(),
        ClientMsg::CopyFail(reason) => {
            let mut body = Vec::new();
            cstr(&mut body, reason.as_bytes());
            Frame::new(b'f', &body).0.to_vec()
        }
        ClientMsg::Terminate => Frame::new(b'X', &[]).0.to_vec(),
        ClientMsg::Raw(tag, body) => Frame::new(*tag, body).0.to_vec(),
        ClientMsg::Bytes(bytes) => bytes.clone(),
    }
}

fn encode_server(msg: &ServerMsg) -> Vec<u8> {
    let auth = |code: u32, rest: &[u8]| {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(rest);
        with_length(Some(b'R'), &body)
    };
    match msg {
        ServerMsg::AuthOk => auth(0, &[]),
        ServerMsg::AuthMd5(salt) => auth(5, salt),
        ServerMsg::AuthSasl => codec::sasl_request(["SCRAM-SHA-256".to_string()].iter()).encode(),
        ServerMsg::ParameterStatus(param, value) => {
            let mut body = Vec::new();
            cstr(&mut body, param.name().as_bytes());
            cstr(&mut body, value.text().as_bytes());
            Frame::new(b'S', &body).0.to_vec()
        }
        ServerMsg::BackendKeyData(pid, key) => {
            codec::backend_key(*pid, &key.to_be_bytes()).encode()
        }
        ServerMsg::Ready(status) => {
            let byte = match status {
                Status::Idle => b'I',
                Status::InTransaction => b'T',
                Status::Failed => b'E',
                Status::Other(byte) => *byte,
            };
            frames::ready_for_query(byte).0.to_vec()
        }
        ServerMsg::ParseComplete => Frame::new(b'1', &[]).0.to_vec(),
        ServerMsg::BindComplete => Frame::new(b'2', &[]).0.to_vec(),
        ServerMsg::CloseComplete => Frame::new(b'3', &[]).0.to_vec(),
        ServerMsg::NoData => Frame::new(b'n', &[]).0.to_vec(),
        ServerMsg::RowDescription => {
            let mut body = 1u16.to_be_bytes().to_vec();
            cstr(&mut body, b"x");
            body.extend([
                0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 0xff, 0xff, 0xff, 0xff, 0, 0,
            ]);
            Frame::new(b'T', &body).0.to_vec()
        }
        ServerMsg::DataRow(value) => {
            let mut body = 1u16.to_be_bytes().to_vec();
            body.extend((value.len() as i32).to_be_bytes());
            body.extend(value);
            Frame::new(b'D', &body).0.to_vec()
        }
        ServerMsg::CommandComplete(tag) => {
            let mut body = Vec::new();
            cstr(&mut body, tag.as_bytes());
            Frame::new(b'C', &body).0.to_vec()
        }
        ServerMsg::EmptyQuery => Frame::new(b'I', &[]).0.to_vec(),
        ServerMsg::PortalSuspended => Frame::new(b's', &[]).0.to_vec(),
        ServerMsg::Error { severity, code } => {
            let severity = match severity {
                Severity::Error => "ERROR",
                Severity::Fatal => "FATAL",
                Severity::Panic => "PANIC",
            };
            error_response(severity, &code.replace('\0', ""), "fuzzed")
        }
        ServerMsg::Notice => error_response("NOTICE", "00000", "note")
            .iter()
            .enumerate()
            .map(|(i, &b)| if i == 0 { b'N' } else { b })
            .collect(),
        ServerMsg::Notification => Frame::new(b'A', b"\0\0\0\x07chan\0payload\0").0.to_vec(),
        ServerMsg::CopyInResponse => Frame::new(b'G', b"\0\0\x01\0\0").0.to_vec(),
        ServerMsg::Raw(tag, body) => Frame::new(*tag, body).0.to_vec(),
        ServerMsg::Bytes(bytes) => bytes.clone(),
    }
}

/// The bytes of one typed opening; a startup the codec accepts must re-encode exactly.
/// Returns the startup, if it was one the codec accepted.
fn opening(opening: &Opening) -> Option<Startup> {
    let bytes = match opening {
        Opening::SslRequest => with_length(None, &codec::SSL_REQUEST.to_be_bytes()),
        Opening::GssEncRequest => with_length(None, &codec::GSSENC_REQUEST.to_be_bytes()),
        Opening::Cancel { pid, key } => encode_cancel(*pid, key),
        Opening::Startup { minor, params } => {
            let mut startup = Startup {
                version: if *minor {
                    codec::PROTOCOL_3_2
                } else {
                    PROTOCOL_3_0
                },
                params: Vec::new(),
            };
            for (key, value) in params {
                startup
                    .params
                    .push((key.name().to_string(), value.text().to_string()));
            }
            startup.encode()
        }
    };
    let body = &bytes[4..];
    match parse_startup(body) {
        Ok(StartupPacket::Startup(startup)) => {
            assert_eq!(&startup.encode()[4..], body);
            Some(startup)
        }
        Ok(StartupPacket::Cancel { pid, key }) => {
            assert_eq!(&encode_cancel(pid, &key)[4..], body);
            None
        }
        Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
            assert_eq!(body.len(), 4);
            None
        }
        Err(_) => None,
    }
}

struct Fixture {
    users: Users,
    pool: switchyard::upstream::Pool,
    runtime: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    thread_local! {
        static FIXTURE: OnceCell<&'static Fixture> = const { OnceCell::new() };
    }
    FIXTURE.with(|cell| {
        *cell.get_or_init(|| {
            let text = switchyard::testing::postgres_config(
                "",
                "servers = [ { address = \"127.0.0.1:1\" } ]",
                &format!("[[user]]\nname = \"app\"\npassword = \"{PASSWORD}\""),
            );
            let config = switchyard::testing::load_config(&text).expect("valid config");
            Box::leak(Box::new(Fixture {
                users: Users::from_config(&config).expect("users"),
                pool: switchyard::testing::two_server_pool(""),
                runtime: tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("runtime"),
            }))
        })
    })
}

/// Runs the client-auth exchange of `auth` over an in-memory stream: the proxy's side is
/// `authenticate_client`; the client answers each request from `auth.replies`.
fn authenticate(auth: &Auth) {
    use tokio::io::AsyncWriteExt;
    let fixture = fixture();
    let user = if auth.known_user { "app" } else { "nobody" };
    let mut startup = Startup {
        version: PROTOCOL_3_0,
        params: Vec::new(),
    };
    startup.set_param("user", user);
    let method = match auth.method {
        Method::Trust => PostgresAuth::Trust,
        Method::Md5 => PostgresAuth::Md5,
        Method::Scram => PostgresAuth::ScramSha256,
        Method::Cleartext => PostgresAuth::Cleartext,
    };
    let limits = MessageLimits::default();
    let (proxy, mut client) = tokio::io::duplex(1 << 16);
    // The proxy's end is dropped when it is done, so the client's final read ends.
    let server = async {
        let mut proxy = proxy;
        authenticate_client(
            &mut proxy,
            &startup,
            method,
            &fixture.users,
            &fixture.pool,
            true,
            &limits,
        )
        .await
    };
    let client = async move {
        let mut replies = auth.replies.iter();
        let mut scram: Option<ClientExchange> = None;
        while let Ok(message) = codec::read_message(&mut client, 1 << 16).await {
            if message.tag != b'R' || message.body.len() < 4 {
                break;
            }
            let code = u32::from_be_bytes([
                message.body[0],
                message.body[1],
                message.body[2],
                message.body[3],
            ]);
            let data = &message.body[4..];
            if code == 0 {
                break;
            }
            if code == 12 {
                if let Some(exchange) = &scram {
                    let _ = exchange.finish(data);
                }
                continue;
            }
            let Some(reply) = replies.next() else { break };
            let bytes = match reply {
                AuthReply::Right => match code {
                    3 => password(PASSWORD),
                    5 => {
                        let salt = [data[0], data[1], data[2], data[3]];
                        password(
                            &md5::answer(&md5::stored(user, PASSWORD), salt).unwrap_or_default(),
                        )
                    }
                    10 => match ClientExchange::start(Credential::Password(PASSWORD.into())) {
                        Ok((exchange, first)) => {
                            scram = Some(exchange);
                            sasl_initial("SCRAM-SHA-256", first.as_bytes())
                        }
                        Err(_) => break,
                    },
                    11 => match scram.as_mut().map(|exchange| exchange.respond(data)) {
                        Some(Ok(last)) => with_length(Some(b'p'), last.as_bytes()),
                        _ => break,
                    },
                    _ => break,
                },
                AuthReply::Password(text) => password(&text.replace('\0', "")),
                AuthReply::SaslInitial { mechanism, data } => {
                    sasl_initial(if *mechanism { "SCRAM-SHA-256" } else { "PLAIN" }, data)
                }
                AuthReply::SaslResponse(data) => with_length(Some(b'p'), data),
                AuthReply::Raw(tag, body) => with_length(Some(*tag), body),
            };
            if client.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = client.shutdown().await;
        // Drain so the proxy's writes never block.
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
    };
    fixture.runtime.block_on(async {
        let (outcome, ()) = tokio::join!(server, client);
        let right = auth.known_user
            && matches!(auth.replies.first(), Some(AuthReply::Right))
            && (auth.method != Method::Scram
                || matches!(auth.replies.get(1), Some(AuthReply::Right)));
        if right {
            assert!(outcome.is_ok(), "the right password must log in: {auth:?}");
        }
        if outcome.is_ok() && auth.method == Method::Scram {
            // The proof needs the server's nonce: no fuzzed reply can forge it.
            assert!(right, "a SCRAM login without the right proof: {auth:?}");
        }
        if !auth.known_user && !matches!(auth.method, Method::Trust) {
            assert!(outcome.is_err(), "an unknown user logged in: {auth:?}");
        }
    });
}

fn password(text: &str) -> Vec<u8> {
    let mut body = text.as_bytes().to_vec();
    body.push(0);
    with_length(Some(b'p'), &body)
}

fn sasl_initial(mechanism: &str, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, mechanism.as_bytes());
    body.extend((data.len() as i32).to_be_bytes());
    body.extend(data);
    with_length(Some(b'p'), &body)
}

/// Frames all of `bytes`: they must be whole messages, each re-encoding to itself.
fn whole_frames(bytes: &[u8], what: &str) -> Vec<Frame> {
    let mut reader = FrameReader::new(usize::MAX >> 1);
    reader.feed(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = reader.next_frame().expect("well framed") {
        assert_eq!(Frame::new(frame.tag(), frame.body()).message(), frame);
        frames.push(frame.to_frame());
    }
    assert!(!reader.has_partial(), "{what}: a partial message");
    frames
}

/// What the checks remember across actions.
#[derive(Default)]
struct Model {
    /// Server statement name → (text, parameter types), as sent to any server.
    server_names: HashMap<Vec<u8>, (Vec<u8>, Vec<u8>)>,
    /// Every client's SQL text and startup parameter names, lowercased.
    named: [String; CLIENTS],
    /// The statements each client's startup parameters became.
    from_startup: [Vec<String>; CLIENTS],
    was_pinned: [bool; CLIENTS],
    leases: usize,
    given_back: usize,
}

impl Model {
    /// Records the statement a server name stands for and asserts that the name never
    /// stood for another (text and parameter types).
    fn one_statement_per_server_name(&mut self, parse: &Parse<'_>) {
        let text = (parse.query.to_vec(), parse.types.to_vec());
        let known = self
            .server_names
            .entry(parse.name.to_vec())
            .or_insert(text.clone());
        assert_eq!(*known, text, "one server name for two statements");
    }
}

fn check(sessions: &mut Sessions, model: &mut Model) {
    for conn in &mut sessions.conns {
        let bytes = std::mem::take(&mut conn.to_server);
        for frame in whole_frames(&bytes, "to server") {
            if frame.tag() != b'P' {
                continue;
            }
            let Ok(parse) = Parse::read(frame.body()) else {
                continue;
            };
            if parse.name.len() == 35 && parse.name.starts_with(b"sy_") {
                model.one_statement_per_server_name(&parse);
            }
        }
        conn.resets.clear();
    }
    for lease in &sessions.leases[model.leases..] {
        if lease.applied_before != 0 && lease.applied_before != lease.client_settings {
            assert!(
                lease.reset.is_some(),
                "another client's settings were not reset: {lease:?}"
            );
        }
    }
    model.leases = sessions.leases.len();
    for (who, client) in sessions.clients.iter_mut().enumerate() {
        let bytes = std::mem::take(&mut client.conv.to_client);
        whole_frames(&bytes, "to client");
        if model.was_pinned[who] && !client.ended {
            assert!(client.conv.pinned.is_some(), "a pin was lost");
        }
        model.was_pinned[who] |= client.conv.pinned.is_some();
        for name in ["s1", "s2", "S1"] {
            if let Some(statement) = client.conv.statements.get(name.as_bytes()) {
                let parse = Parse::read(statement.parse.body()).expect("the renamed Parse reads");
                assert_eq!(parse.name, statement.server_name.as_bytes());
                model.one_statement_per_server_name(&parse);
            }
        }
        for statement in client.conv.settings.statements() {
            if model.from_startup[who].iter().any(|s| s == statement) {
                continue;
            }
            let changes = classify(statement, &Rules::default()).session;
            let [SessionChange::Set { name, .. }] = changes.as_slice() else {
                panic!("the replay holds {statement:?}, not one SET: {changes:?}");
            };
            assert!(
                model.named[who].contains(&name.to_ascii_lowercase()),
                "the replay sets {name}, which the client never named"
            );
        }
    }
    for &(who, index) in &sessions.given_back[model.given_back..] {
        let client = &sessions.clients[who];
        if client.ended {
            continue;
        }
        assert!(
            client.conv.pinned.is_none(),
            "a pinned client's connection went back"
        );
        let applied = sessions.conns[index].tracked.applied;
        if client.held.as_ref().is_none_or(|(held, _)| *held != index) {
            assert!(
                applied == client.conv.settings.id() || applied == UNKNOWN,
                "a connection went back with settings {applied} for a client with {}",
                client.conv.settings.id()
            );
        }
    }
    model.given_back = sessions.given_back.len();
}

fuzz_target!(|input: Input| {
    let mut model = Model::default();
    let mut settings = Vec::new();
    for (who, openings) in input.openings.iter().enumerate() {
        let startup = openings.iter().filter_map(opening).last();
        let startup_settings = startup
            .as_ref()
            .map(SessionSettings::from_startup)
            .unwrap_or_default();
        model.from_startup[who] = startup_settings.statements().map(String::from).collect();
        if let Some(startup) = &startup {
            for (name, _) in &startup.params {
                model.named[who].push_str(&name.to_ascii_lowercase());
                model.named[who].push('\n');
            }
        }
        settings.push(startup_settings);
    }
    if let Some(auth) = &input.auth {
        authenticate(auth);
    }
    let split = input
        .split
        .then(|| SplitConfig::for_pool(&fixture().pool.database));
    let max_prepared = usize::from(input.max_prepared % 8) + 1;
    let mut sessions = Sessions::new(settings, 1, max_prepared, split);
    for action in input.actions.iter().take(256) {
        match action {
            Action::Client(who, msg) => {
                let mut sql = String::new();
                let bytes = encode_client(msg, &mut sql);
                model.named[who.index()].push_str(&sql.to_ascii_lowercase());
                sessions.client_bytes(who.index(), &bytes);
            }
            Action::Batch(who, msgs) => {
                let mut sql = String::new();
                let bytes: Vec<u8> = msgs
                    .iter()
                    .flat_map(|msg| encode_client(msg, &mut sql))
                    .collect();
                model.named[who.index()].push_str(&sql.to_ascii_lowercase());
                sessions.client_bytes(who.index(), &bytes);
            }
            Action::Server(who, msg) => sessions.server_bytes(who.index(), &encode_server(msg)),
            Action::Leave(who) => sessions.client_leaves(who.index()),
        }
        check(&mut sessions, &mut model);
    }
});

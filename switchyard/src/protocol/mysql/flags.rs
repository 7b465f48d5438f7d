//! Capability and status flags, with the protocol's names, and the capabilities switchyard
//! itself supports on each side of a session.

/// Capability flags exchanged in the handshake (`CLIENT_*`).
pub mod capabilities {
    /// Set by MySQL and by clients of MySQL; MariaDB servers clear it to say that the
    /// reserved bytes carry MariaDB's extended capabilities (`CLIENT_MYSQL`).
    pub const LONG_PASSWORD: u32 = 1;
    /// Affected rows count found (matched) rows.
    pub const FOUND_ROWS: u32 = 1 << 1;
    /// All column flags in column definitions.
    pub const LONG_FLAG: u32 = 1 << 2;
    /// The HandshakeResponse41 names a database.
    pub const CONNECT_WITH_DB: u32 = 1 << 3;
    /// `db.table.column` is not allowed.
    pub const NO_SCHEMA: u32 = 1 << 4;
    /// zlib compression of the packets (switchyard never offers it).
    pub const COMPRESS: u32 = 1 << 5;
    /// ODBC client.
    pub const ODBC: u32 = 1 << 6;
    /// `LOAD DATA LOCAL` may be used.
    pub const LOCAL_FILES: u32 = 1 << 7;
    /// Spaces before `(` are ignored.
    pub const IGNORE_SPACE: u32 = 1 << 8;
    /// The 4.1 protocol (every server and client switchyard speaks with).
    pub const PROTOCOL_41: u32 = 1 << 9;
    /// `wait_timeout` is `interactive_timeout`.
    pub const INTERACTIVE: u32 = 1 << 10;
    /// TLS: the server offers it / the client asks for it (SSLRequest).
    pub const SSL: u32 = 1 << 11;
    /// Legacy, ignored by servers.
    pub const IGNORE_SIGPIPE: u32 = 1 << 12;
    /// Status flags in EOF packets (transaction state).
    pub const TRANSACTIONS: u32 = 1 << 13;
    /// 4.1 authentication: a length-prefixed auth response (`CLIENT_RESERVED2`).
    pub const SECURE_CONNECTION: u32 = 1 << 15;
    /// Several statements per COM_QUERY.
    pub const MULTI_STATEMENTS: u32 = 1 << 16;
    /// Several result sets per COM_QUERY.
    pub const MULTI_RESULTS: u32 = 1 << 17;
    /// Several result sets per COM_STMT_EXECUTE.
    pub const PS_MULTI_RESULTS: u32 = 1 << 18;
    /// Authentication plugins named in the handshake.
    pub const PLUGIN_AUTH: u32 = 1 << 19;
    /// Connection attributes in the HandshakeResponse41.
    pub const CONNECT_ATTRS: u32 = 1 << 20;
    /// A length-encoded auth response (longer than 255 bytes allowed).
    pub const PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 1 << 21;
    /// The client handles expired passwords (sandbox mode).
    pub const CAN_HANDLE_EXPIRED_PASSWORDS: u32 = 1 << 22;
    /// OK packets carry session state changes.
    pub const SESSION_TRACK: u32 = 1 << 23;
    /// OK packets replace the EOF packets of result sets.
    pub const DEPRECATE_EOF: u32 = 1 << 24;
    /// Result sets may omit column metadata (MySQL 8; switchyard never offers it).
    pub const OPTIONAL_RESULTSET_METADATA: u32 = 1 << 25;
    /// zstd compression (MySQL 8; never offered).
    pub const ZSTD_COMPRESSION: u32 = 1 << 26;
    /// Query attributes in COM_QUERY (MySQL 8; never offered: it changes COM_QUERY).
    pub const QUERY_ATTRIBUTES: u32 = 1 << 27;
    /// Multi-factor authentication (MySQL 8; never offered).
    pub const MULTI_FACTOR_AUTHENTICATION: u32 = 1 << 28;

    /// What switchyard offers clients in its own HandshakeV10 (plus [`SSL`] when the
    /// listener has TLS): everything a session relays transparently, and none of what
    /// changes the framing or that switchyard cannot relay (compression, query attributes,
    /// optional metadata, multi-factor authentication).
    pub const PROXY: u32 = LONG_PASSWORD
        | FOUND_ROWS
        | LONG_FLAG
        | CONNECT_WITH_DB
        | NO_SCHEMA
        | ODBC
        | LOCAL_FILES
        | IGNORE_SPACE
        | PROTOCOL_41
        | INTERACTIVE
        | IGNORE_SIGPIPE
        | TRANSACTIONS
        | SECURE_CONNECTION
        | MULTI_STATEMENTS
        | MULTI_RESULTS
        | PS_MULTI_RESULTS
        | PLUGIN_AUTH
        | CONNECT_ATTRS
        | PLUGIN_AUTH_LENENC_CLIENT_DATA
        | SESSION_TRACK
        | DEPRECATE_EOF;

    /// What switchyard asks of a server when it logs in itself (the health check): the
    /// modern handshake and nothing that changes what a query returns.
    pub const LOGIN: u32 = LONG_PASSWORD
        | PROTOCOL_41
        | TRANSACTIONS
        | SECURE_CONNECTION
        | MULTI_RESULTS
        | PLUGIN_AUTH
        | PLUGIN_AUTH_LENENC_CLIENT_DATA
        | SESSION_TRACK
        | DEPRECATE_EOF;

    /// What a server must offer for switchyard to talk to it at all.
    pub const REQUIRED: u32 = PROTOCOL_41 | SECURE_CONNECTION;
}

/// MariaDB's extended capabilities (`MARIADB_CLIENT_*`, the high 32 bits), carried in the
/// reserved bytes of the handshake when `CLIENT_MYSQL` ([`capabilities::LONG_PASSWORD`])
/// is clear. Switchyard relays none of them yet, so it offers none; the values are here to
/// read what a server announces.
pub mod mariadb {
    /// Progress reports in ERR packets (code 0xFFFF).
    pub const PROGRESS: u32 = 1;
    /// COM_MULTI (several commands in one packet).
    pub const COM_MULTI: u32 = 1 << 1;
    /// Bulk COM_STMT_EXECUTE.
    pub const STMT_BULK_OPERATIONS: u32 = 1 << 2;
    /// Extended type information in column definitions.
    pub const EXTENDED_METADATA: u32 = 1 << 3;
    /// Prepared statement metadata cached by the client.
    pub const CACHE_METADATA: u32 = 1 << 4;
}

/// Server status flags (`SERVER_STATUS_*`) in OK and EOF packets.
pub mod status {
    /// A transaction is open: the session cannot move to another server connection.
    pub const IN_TRANS: u16 = 1;
    /// Autocommit is on.
    pub const AUTOCOMMIT: u16 = 1 << 1;
    /// More result sets follow.
    pub const MORE_RESULTS_EXISTS: u16 = 1 << 3;
    /// `SERVER_STATUS_CURSOR_EXISTS`: a prepared statement's cursor is open; its rows
    /// come with COM_STMT_FETCH.
    pub const CURSOR_EXISTS: u16 = 1 << 6;
    /// The open transaction is read-only.
    pub const IN_TRANS_READONLY: u16 = 1 << 13;
    /// The OK packet carries session state changes.
    pub const SESSION_STATE_CHANGED: u16 = 1 << 14;
}

//! A minimal safe wrapper over libpq (pq-sys) for the tests: libpq is the real client, so the
//! URLs datalayer builds are checked by the parser and the connection code that will use them.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char};
use std::ptr;

use pq_sys::{
    ConnStatusType, ExecStatusType, PGconn, PQclear, PQconnectdb, PQconninfoFree, PQconninfoParse,
    PQerrorMessage, PQexec, PQfinish, PQfreemem, PQgetvalue, PQntuples, PQresultErrorMessage,
    PQresultStatus, PQstatus,
};

/// What libpq's `PQconninfoParse` makes of a connection string: keyword → value bytes, for the
/// keywords that have a value.
pub fn conninfo_parse(conninfo: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let c = CString::new(conninfo).map_err(|e| e.to_string())?;
    let mut err: *mut c_char = ptr::null_mut();
    // SAFETY: `c` is a valid C string; libpq returns either an array terminated by a NULL
    // keyword (freed below with PQconninfoFree) or NULL with an error message we free.
    unsafe {
        let options = PQconninfoParse(c.as_ptr(), &mut err);
        if options.is_null() {
            let message = if err.is_null() {
                "out of memory".to_string()
            } else {
                let m = CStr::from_ptr(err).to_string_lossy().into_owned();
                PQfreemem(err.cast());
                m
            };
            return Err(message);
        }
        let mut map = BTreeMap::new();
        let mut option = options;
        while !(*option).keyword.is_null() {
            if !(*option).val.is_null() {
                let key = CStr::from_ptr((*option).keyword)
                    .to_string_lossy()
                    .into_owned();
                map.insert(key, CStr::from_ptr((*option).val).to_bytes().to_vec());
            }
            option = option.add(1);
        }
        PQconninfoFree(options);
        Ok(map)
    }
}

/// One libpq connection.
pub struct Conn(*mut PGconn);

impl Conn {
    /// Connects with a URL or conninfo string; the error is libpq's message.
    pub fn connect(conninfo: &str) -> Result<Conn, String> {
        let c = CString::new(conninfo).map_err(|e| e.to_string())?;
        // SAFETY: valid C string; the connection is finished in Drop.
        let conn = Conn(unsafe { PQconnectdb(c.as_ptr()) });
        if conn.0.is_null() {
            return Err("out of memory".into());
        }
        // SAFETY: non-null connection.
        if unsafe { PQstatus(conn.0) } != ConnStatusType::CONNECTION_OK {
            return Err(conn.error());
        }
        Ok(conn)
    }

    fn error(&self) -> String {
        // SAFETY: the message belongs to the connection and lives as long as it.
        unsafe { CStr::from_ptr(PQerrorMessage(self.0)) }
            .to_string_lossy()
            .trim()
            .to_string()
    }

    /// Runs SQL; returns the first column of the first row, if any.
    pub fn query(&self, sql: &str) -> Result<Option<String>, String> {
        let c = CString::new(sql).map_err(|e| e.to_string())?;
        // SAFETY: valid connection and C string; the result is cleared before returning.
        unsafe {
            let result = PQexec(self.0, c.as_ptr());
            let status = PQresultStatus(result);
            let outcome = match status {
                ExecStatusType::PGRES_COMMAND_OK => Ok(None),
                ExecStatusType::PGRES_TUPLES_OK if PQntuples(result) == 0 => Ok(None),
                ExecStatusType::PGRES_TUPLES_OK => Ok(Some(
                    CStr::from_ptr(PQgetvalue(result, 0, 0))
                        .to_string_lossy()
                        .into_owned(),
                )),
                _ => Err(CStr::from_ptr(PQresultErrorMessage(result))
                    .to_string_lossy()
                    .trim()
                    .to_string()),
            };
            PQclear(result);
            outcome
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: the connection came from PQconnectdb and is finished once.
        unsafe { PQfinish(self.0) }
    }
}

/// `ident` quoted as a PostgreSQL identifier.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

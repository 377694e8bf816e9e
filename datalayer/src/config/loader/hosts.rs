//! Host and port lists (`a,b`, as libpq's `host` and `port`), for the primary and the read
//! replica alike.

use super::Loader;
use crate::config::{Host, url};

impl Loader<'_> {
    /// A host list variable (`a,b`, as libpq's `host`): the first host and the others.
    pub(super) fn hosts(
        &mut self,
        variable: &'static str,
        text: Option<&str>,
        default: Vec<Host>,
    ) -> (Host, Vec<Host>) {
        let mut hosts = self.var(
            variable,
            text,
            default,
            |text| {
                text.split(',')
                    .map(|h| Host::parse(h.trim()).map_err(str::to_string))
                    .collect::<Result<Vec<_>, _>>()
            },
            |hosts| {
                hosts
                    .iter()
                    .map(Host::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            },
        );
        let first = hosts.remove(0);
        (first, hosts)
    }

    /// A port list variable (one for all hosts, or one per host): the first port and the
    /// others.
    pub(super) fn ports(
        &mut self,
        variable: &'static str,
        text: Option<&str>,
        default: u16,
    ) -> (u16, Vec<u16>) {
        let mut ports = self.var(
            variable,
            text,
            vec![default],
            |text| {
                text.split(',')
                    .map(|p| {
                        url::parse_port(p).ok_or_else(|| "is not a port (1-65535)".to_string())
                    })
                    .collect::<Result<Vec<_>, _>>()
            },
            |ports| {
                ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            },
        );
        let first = ports.remove(0);
        (first, ports)
    }

    /// Pairs the hosts after the first with their ports: `port` for all, or one each from
    /// `more_ports`; another count is a problem of `port_variable`.
    pub(super) fn pair_ports(
        &mut self,
        port_variable: &'static str,
        port: u16,
        more_hosts: Vec<Host>,
        more_ports: &[u16],
    ) -> Vec<(Host, u16)> {
        if !more_ports.is_empty() && more_ports.len() != more_hosts.len() {
            self.problem(
                port_variable,
                format!(
                    "gives {} ports for {} hosts; give one port for all, or one per host",
                    more_ports.len() + 1,
                    more_hosts.len() + 1
                ),
            );
        }
        more_hosts
            .into_iter()
            .enumerate()
            .map(|(i, other)| (other, more_ports.get(i).copied().unwrap_or(port)))
            .collect()
    }

    /// Several hosts may not include a socket directory; the entry of `host_variable` shows
    /// them all, in the order libpq tries them.
    pub(super) fn check_several_hosts(
        &mut self,
        from: &'static str,
        host_variable: &'static str,
        host: &Host,
        port: u16,
        more_hosts: &[(Host, u16)],
    ) {
        if more_hosts.is_empty() {
            return;
        }
        if matches!(host, Host::Socket(_))
            || more_hosts.iter().any(|(h, _)| matches!(h, Host::Socket(_)))
        {
            self.problem(
                from,
                "lists several hosts with a socket directory among them; give TCP hosts \
                 (libpq tries them in order)",
            );
        }
        let all = std::iter::once(format!("{host}:{port}"))
            .chain(more_hosts.iter().map(|(h, p)| format!("{h}:{p}")))
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|e| e.variable == host_variable)
        {
            entry.value = format!("{all} (tried in order)");
        }
    }
}

//! Who may read the dashboard. It has no login, so what protects it is where it answers:
//! only requests addressed (by their `Host`) to a loopback name or to a host name the
//! operator configured. A web page on another site that rebinds its own DNS name to
//! 127.0.0.1 still sends its own name as `Host`, and is refused, so it can read neither
//! the API nor the live tap. Scripts from elsewhere can carry a bearer token instead.

use subtle::ConstantTimeEq;

/// How the dashboard decides who may read it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DashboardAccess {
    /// Host name the dashboard answers to besides localhost, 127.0.0.1 and [::1], e.g.
    /// the name of a reverse proxy in front of it (repeatable, or comma-separated in
    /// the environment). The mesh file's control_plane.dashboard_hosts adds more.
    #[arg(
        long = "dashboard-host",
        env = "VIGIL_DASHBOARD_HOSTS",
        value_delimiter = ',',
        value_name = "HOST"
    )]
    pub hosts: Vec<String>,
    /// A request carrying `Authorization: Bearer TOKEN` is answered whatever its Host.
    #[arg(
        long = "dashboard-token",
        env = "VIGIL_DASHBOARD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
}

/// Why a request was refused: the message tells how to let it through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessRefused {
    #[error(
        "this dashboard answers only requests addressed to localhost, 127.0.0.1 or [::1]{configured}, \
         and this one was addressed to {host:?}. To reach it under that name, start the control \
         plane with --dashboard-host {host_only} (or add it to control_plane.dashboard_hosts in \
         the mesh file); a script can instead send `Authorization: Bearer <token>` with the token \
         set in VIGIL_DASHBOARD_TOKEN"
    )]
    ForeignHost {
        host: String,
        host_only: String,
        configured: String,
    },
    #[error(
        "this request names no host; send a Host header (localhost, 127.0.0.1 or [::1]), or \
         `Authorization: Bearer <token>` with the token set in VIGIL_DASHBOARD_TOKEN"
    )]
    NoHost,
}

impl DashboardAccess {
    /// Lets a request through when its bearer token is the configured one, or when its
    /// `host` (the Host header) names loopback or one of `hosts` and `extra_hosts`.
    pub fn check(
        &self,
        host: Option<&str>,
        authorization: Option<&[u8]>,
        extra_hosts: &[String],
    ) -> Result<(), AccessRefused> {
        if let (Some(token), Some(header)) = (&self.token, authorization) {
            let presented = header
                .strip_prefix(b"Bearer ")
                .or_else(|| header.strip_prefix(b"bearer "));
            if let Some(presented) = presented {
                if !token.is_empty() && bool::from(presented.ct_eq(token.as_bytes())) {
                    return Ok(());
                }
            }
        }
        let Some(host) = host else {
            return Err(AccessRefused::NoHost);
        };
        let name = host_name(host);
        if is_loopback(&name)
            || self
                .hosts
                .iter()
                .chain(extra_hosts)
                .any(|allowed| host_name(allowed) == name)
        {
            return Ok(());
        }
        let configured: Vec<&str> = self
            .hosts
            .iter()
            .chain(extra_hosts)
            .map(String::as_str)
            .collect();
        let shown: String = host.chars().take(100).collect();
        Err(AccessRefused::ForeignHost {
            host_only: host_name(&shown),
            host: shown,
            configured: if configured.is_empty() {
                String::new()
            } else {
                format!(" or {}", configured.join(", "))
            },
        })
    }
}

/// The name in a Host value, without its port, brackets or trailing dot, in lower case.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => match host.rsplit_once(':') {
            Some((name, port))
                if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                name
            }
            _ => host,
        },
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn is_loopback(name: &str) -> bool {
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(hosts: &[&str], token: Option<&str>) -> DashboardAccess {
        DashboardAccess {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            token: token.map(str::to_string),
        }
    }

    #[test]
    fn loopback_names_pass_with_any_port() {
        let a = access(&[], None);
        for host in [
            "localhost",
            "LOCALHOST:15080",
            "localhost.:80",
            "127.0.0.1",
            "127.0.0.1:16080",
            "127.1.2.3:9",
            "[::1]",
            "[::1]:15080",
            "::1",
        ] {
            assert_eq!(a.check(Some(host), None, &[]), Ok(()), "{host}");
        }
    }

    #[test]
    fn other_names_are_refused_with_how_to_allow_them() {
        let a = access(&[], None);
        for host in [
            "rebind.example",
            "rebind.example:15080",
            "localhost.rebind.example",
            "127.0.0.1.nip.io",
            "10.0.0.5:15080",
            "[2001:db8::1]:15080",
            "",
        ] {
            let err = a.check(Some(host), None, &[]).expect_err(host);
            assert!(matches!(err, AccessRefused::ForeignHost { .. }), "{host}");
        }
        let message = a
            .check(Some("vigil.example:8443"), None, &[])
            .expect_err("refused")
            .to_string();
        assert!(
            message.contains("--dashboard-host vigil.example "),
            "{message}"
        );
        assert!(message.contains("VIGIL_DASHBOARD_TOKEN"), "{message}");
        assert_eq!(a.check(None, None, &[]), Err(AccessRefused::NoHost));
    }

    #[test]
    fn configured_names_pass_from_the_flag_or_the_mesh_file() {
        let a = access(&["Vigil.Example"], None);
        assert_eq!(a.check(Some("vigil.example:443"), None, &[]), Ok(()));
        let from_mesh = ["ops.example:8080".to_string()];
        assert_eq!(a.check(Some("OPS.example"), None, &from_mesh), Ok(()));
        assert!(a.check(Some("ops.example"), None, &[]).is_err());
    }

    #[test]
    fn the_bearer_token_passes_any_host_and_only_that_token() {
        let a = access(&[], Some("s3cr3t-dashboard-token"));
        let ok = a.check(
            Some("rebind.example"),
            Some(b"Bearer s3cr3t-dashboard-token"),
            &[],
        );
        assert_eq!(ok, Ok(()));
        for wrong in [
            &b"Bearer s3cr3t-dashboard-toke"[..],
            b"Bearer ",
            b"Basic s3cr3t-dashboard-token",
            b"s3cr3t-dashboard-token",
        ] {
            assert!(a.check(Some("rebind.example"), Some(wrong), &[]).is_err());
        }
        // No token configured: an empty bearer proves nothing.
        assert!(access(&[], None)
            .check(Some("rebind.example"), Some(b"Bearer "), &[])
            .is_err());
        assert!(access(&[], Some(""))
            .check(Some("rebind.example"), Some(b"Bearer "), &[])
            .is_err());
    }
}

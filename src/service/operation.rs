//! Every RPC the service answers, and its names on each port, in one table:
//! the gRPC port routes by its paths, the HTTP gateway by its routes and
//! methods, and the spans are named from it. A new RPC is a variant and a
//! row here, and its handlers on each port.

/// The route of a pair's wait, before its id.
macro_rules! pair_route {
    () => {
        "/wait-for-second-party/"
    };
}

/// The route of a group's wait, before its id.
macro_rules! group_route {
    () => {
        "/wait-for-parties/"
    };
}

/// A row of [`NAMES`]: an operation's gRPC method, and the HTTP method and
/// routes it is served on.
macro_rules! row {
    ($method:literal, http $http:literal on [$($route:expr),+]) => {
        Names {
            method: $method,
            grpc_path: concat!("/rendezvous.v1.Sync/", $method),
            grpc_name: concat!("rendezvous.v1.Sync/", $method),
            http: &[$(HttpRoute {
                method: $http,
                prefix: $route,
                route: concat!($route, "{id}"),
                name: concat!($http, " ", $route, "{id}"),
            }),+],
        }
    };
}

/// One RPC of `rendezvous.v1.Sync`, whichever port it came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `WaitForSecondParty`, `POST /wait-for-second-party/{id}`.
    WaitForSecondParty,
    /// `WaitForParties`, `POST /wait-for-parties/{id}`. A group of two
    /// asked for this way is still this call.
    WaitForParties,
    /// `Withdraw`, `DELETE` on either wait's route.
    Withdraw,
}

/// What each operation is called on the wire, in [`Operation`]'s order.
const NAMES: [Names; 3] = [
    row!("WaitForSecondParty", http "POST" on [pair_route!()]),
    row!("WaitForParties", http "POST" on [group_route!()]),
    row!("Withdraw", http "DELETE" on [pair_route!(), group_route!()]),
];

/// An operation's names on the wire.
struct Names {
    /// The gRPC method, in [`Operation::GRPC_SERVICE`].
    method: &'static str,
    /// `/service/method`: a gRPC request's path.
    grpc_path: &'static str,
    /// `service/method`, as OpenTelemetry names a gRPC span.
    grpc_name: &'static str,
    /// Where it is served on the HTTP port: the first is its own.
    http: &'static [HttpRoute],
}

/// An HTTP method on one route, with the id as the route's last segment.
#[derive(Debug)]
pub struct HttpRoute {
    /// The HTTP method.
    pub method: &'static str,
    /// The route's path before the id.
    pub prefix: &'static str,
    /// The route with its id as a parameter (never the id itself), as
    /// OpenTelemetry's `http.route` has it.
    pub route: &'static str,
    /// `METHOD route`, as OpenTelemetry names an HTTP server span.
    pub name: &'static str,
}

impl Operation {
    /// Every operation, in the table's order.
    pub const ALL: [Self; 3] = [
        Self::WaitForSecondParty,
        Self::WaitForParties,
        Self::Withdraw,
    ];

    /// The gRPC service every method belongs to.
    pub const GRPC_SERVICE: &str = "rendezvous.v1.Sync";

    const fn names(self) -> &'static Names {
        &NAMES[self as usize]
    }

    /// The gRPC method's name.
    pub const fn grpc_method(self) -> &'static str {
        self.names().method
    }

    /// The gRPC request's path: `/rendezvous.v1.Sync/Method`.
    pub const fn grpc_path(self) -> &'static str {
        self.names().grpc_path
    }

    /// `service/method`, as OpenTelemetry names a gRPC span.
    pub const fn grpc_name(self) -> &'static str {
        self.names().grpc_name
    }

    /// The operation a gRPC request's path asks for.
    pub fn from_grpc_path(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.grpc_path() == path)
    }

    /// Its own HTTP route: the first it is served on.
    pub const fn http(self) -> &'static HttpRoute {
        &self.names().http[0]
    }

    /// The HTTP routes that `path` is on, with the id's segment: empty if
    /// none is. An operation served on several routes appears once for each.
    pub fn http_routes(path: &str) -> impl Iterator<Item = (Self, &'static HttpRoute, &str)> {
        Self::ALL.into_iter().flat_map(move |op| {
            op.names().http.iter().filter_map(move |route| {
                path.strip_prefix(route.prefix)
                    .map(|segment| (op, route, segment))
            })
        })
    }

    /// The gRPC paths of every operation, for an error that lists them.
    pub fn grpc_paths() -> String {
        Self::ALL.map(Self::grpc_path).join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_its_own_row() {
        for (i, op) in Operation::ALL.into_iter().enumerate() {
            assert_eq!(op as usize, i);
            assert_eq!(Operation::from_grpc_path(op.grpc_path()), Some(op));
            assert_eq!(op.grpc_path(), format!("/{}", op.grpc_name()));
            assert_eq!(
                op.grpc_name(),
                format!("{}/{}", Operation::GRPC_SERVICE, op.grpc_method())
            );
        }
        assert_eq!(
            Operation::WaitForParties.grpc_path(),
            "/rendezvous.v1.Sync/WaitForParties"
        );
        assert_eq!(Operation::from_grpc_path("/rendezvous.v1.Sync/Other"), None);
    }

    #[test]
    fn http_routes_name_the_operations_served_on_a_path() {
        let on = |path| {
            Operation::http_routes(path)
                .map(|(op, route, segment)| (op, route.method, route.route, segment))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            on("/wait-for-second-party/a"),
            [
                (
                    Operation::WaitForSecondParty,
                    "POST",
                    "/wait-for-second-party/{id}",
                    "a"
                ),
                (
                    Operation::Withdraw,
                    "DELETE",
                    "/wait-for-second-party/{id}",
                    "a"
                ),
            ]
        );
        assert_eq!(
            on("/wait-for-parties/b"),
            [
                (
                    Operation::WaitForParties,
                    "POST",
                    "/wait-for-parties/{id}",
                    "b"
                ),
                (Operation::Withdraw, "DELETE", "/wait-for-parties/{id}", "b"),
            ]
        );
        assert!(on("/wait-for-nobody/c").is_empty());
        assert_eq!(
            Operation::WaitForParties.http().name,
            "POST /wait-for-parties/{id}"
        );
    }
}

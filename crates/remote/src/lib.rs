//! rsync roles (client, server, daemon) and transports (pipe, ssh, TCP) driving `arsync-proto`.

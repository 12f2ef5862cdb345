//! Sans-IO rsync wire protocol (versions 30-32).

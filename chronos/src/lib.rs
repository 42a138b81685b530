//! The cron jobs framework (Chronos- and Metronome-compatible). Built in issue 5; nothing here yet.

pub mod tcp; pub mod signal;

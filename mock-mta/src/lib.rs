//! mock-mta: an emulation of the Microsoft IIS SMTP service (to be written).

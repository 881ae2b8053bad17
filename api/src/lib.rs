//! The machine API: protobuf definitions and generated gRPC code.

//! Types generated from `proto/keibi.proto`. Nothing outside [`super`] sees them: the wire
//! module turns them into validated domain types.

#![expect(
    clippy::pedantic,
    clippy::all,
    clippy::allow_attributes,
    reason = "generated code; the proto file is the reviewed source"
)]

tonic::include_proto!("keibi.v1");

package main

import (
	"context"
	"encoding/hex"
	"strconv"

	"github.com/containerd/ttrpc"
	"github.com/gogo/protobuf/proto"
)

// The messages of grpc.Health (protocols/health.proto), written by hand: gogo/protobuf
// marshals a plain struct from its protobuf tags, so there is no generated code to keep.

const healthService = "grpc.Health"

// ServingStatus is HealthCheckResponse.ServingStatus.
type ServingStatus int32

const (
	StatusUnknown    ServingStatus = 0
	StatusServing    ServingStatus = 1
	StatusNotServing ServingStatus = 2
)

var servingStatusNames = map[ServingStatus]string{
	StatusUnknown:    "UNKNOWN",
	StatusServing:    "SERVING",
	StatusNotServing: "NOT_SERVING",
}

func (s ServingStatus) String() string {
	if name, ok := servingStatusNames[s]; ok {
		return name
	}
	return strconv.Itoa(int(s))
}

// MarshalText makes the JSON output show the enum by name, as protobuf's JSON mapping does.
func (s ServingStatus) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

type CheckRequest struct {
	Service string `protobuf:"bytes,1,opt,name=service,proto3" json:"service"`
}

func (m *CheckRequest) Reset()         { *m = CheckRequest{} }
func (m *CheckRequest) String() string { return proto.CompactTextString(m) }
func (*CheckRequest) ProtoMessage()    {}

type HealthCheckResponse struct {
	Status ServingStatus `protobuf:"varint,1,opt,name=status,proto3" json:"status"`
}

func (m *HealthCheckResponse) Reset()         { *m = HealthCheckResponse{} }
func (m *HealthCheckResponse) String() string { return proto.CompactTextString(m) }
func (*HealthCheckResponse) ProtoMessage()    {}

type VersionCheckResponse struct {
	GrpcVersion  string `protobuf:"bytes,1,opt,name=grpc_version,proto3" json:"grpc_version"`
	AgentVersion string `protobuf:"bytes,2,opt,name=agent_version,proto3" json:"agent_version"`
}

func (m *VersionCheckResponse) Reset()         { *m = VersionCheckResponse{} }
func (m *VersionCheckResponse) String() string { return proto.CompactTextString(m) }
func (*VersionCheckResponse) ProtoMessage()    {}

// registerHealth serves grpc.Health: Check always answers SERVING, Version names this
// peer and the ttrpc library it was built with.
func registerHealth(server *ttrpc.Server) {
	server.Register(healthService, map[string]ttrpc.Method{
		"Check": func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
			var req CheckRequest
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			return &HealthCheckResponse{Status: StatusServing}, nil
		},
		"Version": func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
			var req CheckRequest
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			return &VersionCheckResponse{
				GrpcVersion:  peerName,
				AgentVersion: "containerd/ttrpc " + ttrpcVersion,
			}, nil
		},
	})
}

// rawMessage carries payload bytes through the ttrpc codec untouched; gogo's
// proto.Marshal and proto.Unmarshal defer to these methods.
type rawMessage struct{ data []byte }

func (m *rawMessage) Reset()                   { m.data = nil }
func (m *rawMessage) String() string           { return hex.EncodeToString(m.data) }
func (*rawMessage) ProtoMessage()              {}
func (m *rawMessage) Marshal() ([]byte, error) { return m.data, nil }

func (m *rawMessage) Unmarshal(data []byte) error {
	m.data = append([]byte(nil), data...)
	return nil
}

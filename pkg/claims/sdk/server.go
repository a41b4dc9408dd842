package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tsidp/tsidp/pkg/claims/claimsv1"
)

// RegisterServer registers p as the tsidp.claims.v1 service on s. Serve
// calls it; tsidp uses it to run plugins in process (sdktest, built-ins).
func RegisterServer(s grpc.ServiceRegistrar, p Plugin) {
	claimsv1.RegisterClaimsPluginServer(s, &server{p: p})
}

type server struct {
	claimsv1.UnimplementedClaimsPluginServer
	p Plugin
}

func (s *server) Describe(context.Context, *claimsv1.DescribeRequest) (*claimsv1.DescribeResponse, error) {
	d := s.p.Describe()
	return &claimsv1.DescribeResponse{
		Name:      d.Name,
		Version:   d.Version,
		Claims:    d.Claims,
		Cacheable: d.Cacheable,
	}, nil
}

func (s *server) Configure(ctx context.Context, req *claimsv1.ConfigureRequest) (*claimsv1.ConfigureResponse, error) {
	cfg := json.RawMessage(req.GetConfigJson())
	if len(cfg) == 0 {
		cfg = json.RawMessage("{}")
	}
	if err := s.p.Configure(ctx, cfg); err != nil {
		return nil, toStatus(codes.InvalidArgument, err)
	}
	return &claimsv1.ConfigureResponse{}, nil
}

func (s *server) Enrich(ctx context.Context, req *claimsv1.EnrichRequest) (*claimsv1.EnrichResponse, error) {
	r, err := requestFromProto(req)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	res, err := s.p.Enrich(ctx, r)
	if err != nil {
		return nil, toStatus(codes.Unknown, err)
	}
	if res == nil {
		return &claimsv1.EnrichResponse{}, nil
	}
	return responseToProto(res)
}

// toStatus keeps a gRPC status error as it is and gives others code c.
func toStatus(c codes.Code, err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		c = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		c = codes.Canceled
	}
	return status.Error(c, err.Error())
}

func requestFromProto(req *claimsv1.EnrichRequest) (*Request, error) {
	pid := req.GetIdentity()
	r := &Request{
		Audience: req.GetAudience(),
		Scopes:   req.GetScopes(),
		Identity: Identity{
			Subject:       pid.GetSubject(),
			UserID:        pid.GetUserId(),
			LoginName:     pid.GetLoginName(),
			DisplayName:   pid.GetDisplayName(),
			ProfilePicURL: pid.GetProfilePicUrl(),
			NodeName:      pid.GetNodeName(),
			NodeID:        pid.GetNodeId(),
			Tailnet:       pid.GetTailnet(),
			Tags:          pid.GetTags(),
			Tagged:        pid.GetTagged(),
			Sharee:        pid.GetSharee(),
		},
	}
	for _, a := range pid.GetAddresses() {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return nil, fmt.Errorf("identity address %q: %w", a, err)
		}
		r.Identity.Addresses = append(r.Identity.Addresses, p)
	}
	if caps := pid.GetCapsJson(); len(caps) > 0 {
		if err := json.Unmarshal(caps, &r.Identity.Caps); err != nil {
			return nil, fmt.Errorf("identity caps: %w", err)
		}
	}
	return r, nil
}

func responseToProto(res *Response) (*claimsv1.EnrichResponse, error) {
	out := &claimsv1.EnrichResponse{Deny: res.Deny, Reason: res.Reason}
	if res.MaxTTL > 0 {
		out.MaxTtl = durationpb.New(res.MaxTTL)
	}
	if res.CacheTTL > 0 {
		out.CacheTtl = durationpb.New(res.CacheTTL)
	}
	names := make([]string, 0, len(res.Claims))
	for name := range res.Claims {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		v, err := json.Marshal(res.Claims[name])
		if err != nil {
			return nil, status.Errorf(codes.Internal, "claim %q: %v", name, err)
		}
		out.Claims = append(out.Claims, &claimsv1.Claim{Name: name, ValueJson: v})
	}
	return out, nil
}

package mirror

import (
	"fmt"
	"os"

	"github.com/docker/cli/cli/config"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// Credentials picks an upstream's authenticator: a username and password
// when given, else the entry for registry in a Docker config.json file, else
// anonymous. Docker Hub's entry is looked up under its historical key.
func Credentials(registry, username, password, dockerConfig string) (authn.Authenticator, error) {
	if username != "" {
		return authn.FromConfig(authn.AuthConfig{Username: username, Password: password}), nil
	}
	if dockerConfig == "" {
		return authn.Anonymous, nil
	}
	f, err := os.Open(dockerConfig)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cf, err := config.LoadFromReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dockerConfig, err)
	}
	key := registry
	if reg, err := name.NewRegistry(registry); err == nil && reg.RegistryStr() == name.DefaultRegistry {
		key = authn.DefaultAuthKey
	}
	ac, err := cf.GetAuthConfig(key)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dockerConfig, err)
	}
	if ac.Username == "" && ac.Password == "" && ac.Auth == "" && ac.IdentityToken == "" && ac.RegistryToken == "" {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(authn.AuthConfig{Username: ac.Username, Password: ac.Password, Auth: ac.Auth,
		IdentityToken: ac.IdentityToken, RegistryToken: ac.RegistryToken}), nil
}

package plugin

import (
	"container/list"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tsidp/tsidp/pkg/claims"
)

// DefaultCacheSize is the default number of answers cached per plugin.
const DefaultCacheSize = 10000

// cacheKey identifies a request: the caller (subject and node, since
// plugins may answer per device), the audience and the scopes in any order.
func cacheKey(req *claims.Request) string {
	var b strings.Builder
	if id := req.Identity; id != nil {
		b.WriteString(id.Subject)
		b.WriteByte(0)
		b.WriteString(id.NodeID)
	}
	b.WriteByte(0)
	b.WriteString(req.Audience)
	scopes := req.Scopes
	if !slices.IsSorted(scopes) {
		scopes = slices.Sorted(slices.Values(scopes))
	}
	for _, s := range scopes {
		b.WriteByte(0)
		b.WriteString(s)
	}
	return b.String()
}

// entry is a cached answer.
type entry struct {
	res *claims.Result
	// fresh is when the answer stops being served from the cache;
	// staleUntil is when on_error "stale" stops falling back to it.
	fresh, staleUntil time.Time
}

// cache is a bounded LRU map of answers.
type cache struct {
	max int

	mu  sync.Mutex
	ll  *list.List // of *cacheItem, most recent first
	idx map[string]*list.Element
}

type cacheItem struct {
	key string
	e   entry
}

func newCache(max int) *cache {
	return &cache{max: max, ll: list.New(), idx: make(map[string]*list.Element)}
}

func (c *cache) get(key string) (entry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.idx[key]
	if !ok {
		return entry{}, false
	}
	c.ll.MoveToFront(el)
	return el.Value.(*cacheItem).e, true
}

func (c *cache) put(key string, e entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.idx[key]; ok {
		el.Value.(*cacheItem).e = e
		c.ll.MoveToFront(el)
		return
	}
	c.idx[key] = c.ll.PushFront(&cacheItem{key: key, e: e})
	for c.ll.Len() > c.max {
		last := c.ll.Back()
		c.ll.Remove(last)
		delete(c.idx, last.Value.(*cacheItem).key)
	}
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}

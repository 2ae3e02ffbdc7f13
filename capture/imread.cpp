// See imread.go.
#include <cstdio>
#include <exception>
#include <opencv2/imgcodecs.hpp>

#include "imread.h"

void* gnl_imread(const char* path, int flags, char* reason, int n) {
	reason[0] = 0;
	try {
		return new cv::Mat(cv::imread(path, flags));
	} catch (const std::exception& e) {
		std::snprintf(reason, n, "%s", e.what());
	} catch (...) {
		std::snprintf(reason, n, "unknown C++ exception");
	}
	return new cv::Mat();
}
